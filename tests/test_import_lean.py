import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "openvino", "tensorrt", "diffusers", "transformers", "onnx", "nncf", "torchao")


def test_import_sdopt_pulls_in_no_backend():
    code = "import sys, sdopt, sdopt.cli; print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    assert out == "", f"import sdopt imported: {out}"


def test_cli_help_is_lean():
    # `sdopt --help` builds every parser; it must stay quick, so no backend import either.
    code = (
        "import sys\nfrom sdopt.cli import build_parser\nbuild_parser()\n"
        "print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    assert out == ""


# Each filtered line as its library logs it (logger, format, args). Some print only on some CPUs
# (bitsandbytes' kernels-community line only where the CPU has AVX-512-BF16), so each is emitted
# here directly: the filter is checked for every line on every machine, whichever CPU runs it.
NOISE_AS_LOGGED = [
    ("torchao", "Failed to load %s", ("/x/torchao/_C_cutlass_90a.so",)),
    ("torch.utils._pytree", "%s is an Enum subclass and is now natively supported", ("Foo",)),
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`", ()),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already `pip install kernels` and the kernels >= 0.11.1", ("No module named 'kernels'",)),
]


def test_every_known_noise_line_is_filtered_and_other_warnings_from_its_logger_are_not():
    from sdopt._third_party_logs import _KNOWN_NOISE

    assert {name for name, _, _ in NOISE_AS_LOGGED} == set(_KNOWN_NOISE)  # a new entry brings its example
    code = (
        "import json, logging, sys, sdopt\n"
        "for name, fmt, args in json.loads(sys.argv[1]):\n"
        "    logging.getLogger(name).warning(fmt, *args)\n"
        "    logging.getLogger(name).warning('a real warning from %s', name)\n"
    )
    import json

    err = subprocess.run([sys.executable, "-c", code, json.dumps(NOISE_AS_LOGGED)], capture_output=True, text=True, check=True, timeout=120).stderr
    for name, fmt, args in NOISE_AS_LOGGED:
        assert fmt % args not in err, err
        assert f"a real warning from {name}" in err


@pytest.mark.slow
def test_importing_the_backends_prints_nothing_on_this_cpu():
    """Whatever this CPU's features, the real imports print no line the filter does not know."""
    import importlib.util

    import pytest

    present = [m for m in ("diffusers.quantizers.torchao.torchao_quantizer", "bitsandbytes", "optimum.quanto", "torchao") if importlib.util.find_spec(m.split(".")[0])]
    if not present:
        pytest.skip("no quantization library installed (the quant extra): nothing here logs at import")
    code = "import sdopt\n" + "".join(f"import {m}\n" for m in present)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stderr
    assert err.strip() == "", err
