"""Registrations of every exporter: plain data, importing no backend library."""

from sdopt.export import Exporter, register_exporter

register_exporter(
    Exporter(
        name="onnx",
        module="sdopt.export.onnx",
        backend="onnxruntime",
        extra="onnx",
        requires=("onnx", "onnxruntime", "torch"),
        precisions=("fp32", "fp16"),
        options=("skip_validation", "opset", "optimize", "vae_decoder", "deep_cache", "no_rewrites", "rewrite"),
        description="ONNX graphs in Optimum's layout, run by ONNX Runtime",
    )
)

register_exporter(
    Exporter(
        name="openvino",
        module="sdopt.export.openvino",
        backend="openvino",
        extra="openvino",
        requires=("openvino", "torch"),
        precisions=("fp32", "fp16", "bf16"),
        options=("skip_validation", "height", "width", "batch", "vae_decoder", "deep_cache", "no_rewrites", "rewrite"),
        description="OpenVINO IR in Optimum Intel's layout; optional static shapes (--height/--width/--batch)",
        instead={"static": "give --height and --width (and --batch): an OpenVINO export given a size is built for that one shape"},
    )
)

register_exporter(
    Exporter(
        name="tensorrt",
        module="sdopt.export.tensorrt",
        backend="tensorrt",
        extra="tensorrt",
        requires=("tensorrt", "onnx", "onnxruntime", "torch"),
        precisions=("fp32", "fp16", "bf16", "int8", "fp8"),  # int8/fp8: ModelOpt's Q/DQ in the UNet, needs sdopt[modelopt]
        options=("skip_validation", "opset", "height", "width", "shapes", "batch_range", "static", "refit", "rebuild", "no_rewrites", "rewrite",
                 "calibration_prompts"),
        description="TensorRT engines (NVIDIA GPUs), built from the ONNX graphs the artifact keeps; unverified on a GPU so far",
    )
)
