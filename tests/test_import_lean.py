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


def test_known_third_party_import_noise_is_filtered_and_other_warnings_are_not():
    import importlib.util

    import pytest

    if importlib.util.find_spec("torchao") is None:
        pytest.skip("the noise comes from torchao (the quant extra), which is not installed")
    code = (
        "import logging, sdopt, diffusers.quantizers.torchao.torchao_quantizer\n"
        "logging.getLogger('torchao').warning('a real torchao warning')\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    for noise in ("Failed to load", "Unable to import `torchao` Tensor objects", "is an Enum subclass"):
        assert noise not in err, err
    assert "a real torchao warning" in err
