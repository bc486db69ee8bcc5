"""Registrations of every exporter: plain data, importing no backend library."""

from sdopt.export import Exporter, register_exporter

register_exporter(
    Exporter(
        target="onnx",
        module="sdopt.export.onnx",
        backend="onnxruntime",
        extra="onnx",
        requires=("onnx", "onnxruntime", "torch"),
        precisions=("fp32", "fp16"),
        description="ONNX graphs in Optimum's layout, run by ONNX Runtime",
    )
)

register_exporter(
    Exporter(
        target="openvino",
        module="sdopt.export.openvino",
        backend="openvino",
        extra="openvino",
        requires=("openvino", "torch"),
        precisions=("fp32", "fp16", "bf16"),
        description="OpenVINO IR in Optimum Intel's layout; optional static shapes (--height/--width/--batch)",
    )
)
