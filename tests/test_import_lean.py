import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "openvino", "tensorrt", "diffusers", "transformers", "onnx", "nncf", "torchao")


def test_import_sdopt_pulls_in_no_backend():
    code = "import sys, sdopt, sdopt.cli; print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import sdopt imported: {out}"


def test_cli_help_is_lean():
    # `sdopt --help` builds every parser; it must stay quick, so no backend import either.
    code = (
        "import sys\nfrom sdopt.cli import build_parser\nbuild_parser()\n"
        "print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
