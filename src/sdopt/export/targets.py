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
