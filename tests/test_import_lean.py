import os
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
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode.", ()),
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized. Using the default loss: `ForCausalLMLoss`.", ()),
    ("diffusers.configuration_utils", "The config attributes {'skip_prk_steps': True} were passed to TCDScheduler, but are not expected and will be ignored. Please verify your scheduler_config.json configuration file.", ()),
    ("diffusers.models.modeling_utils", "There are modules in UNet2DConditionModel that should be kept in float32: []. Casting directly with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these modules in float32.", ()),
    ("transformers.tokenization_utils_base", "Token indices sequence length is longer than the specified maximum sequence length for this model (289 > 77). Running this sequence through the model will result in indexing errors", ()),
    ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr/local/cuda",)),
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for backward compatibility. Install torchvision to use the default backend, or import `CLIPImageProcessorPil` directly to silence this warning.", ()),
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


def test_diffusers_float32_modules_warning_is_dropped_only_for_an_empty_list():
    """sdopt generate TORCHAO_ARTIFACT --precision bf16 -q printed diffusers' "should be kept in float32: []. Casting
    directly with `to()` can lead to inconsistent results" (no module to keep); a list that names modules is a real warning."""
    message = "There are modules in UNet2DConditionModel that should be kept in float32: %s. Casting directly with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these modules in float32."
    code = "import logging, sys, sdopt\nlogging.getLogger('diffusers.models.modeling_utils').warning(sys.argv[1])\n"
    for modules, shown in (("[]", False), ("['proj_out']", True)):
        err = subprocess.run([sys.executable, "-c", code, message % modules], capture_output=True, text=True, check=True, timeout=120).stderr
        assert (message % modules in err) == shown, err


# bitsandbytes asks the ``kernels`` package for a hub kernel only where the CPU has AVX-512-BF16
# (the line CI's machine printed and this one may not): re-running its CPU ops module with that
# check forced true takes the same branch on any CPU.
_FORCE_BNB_AVX512_BF16 = """
import importlib, warnings
import bitsandbytes.functional as bnb_functional
import bitsandbytes.backends.cpu.ops as bnb_cpu_ops
natural = bool(bnb_functional.has_avx512bf16())  # this CPU's own answer: its first import took that branch already
bnb_functional.has_avx512bf16 = lambda: True
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # re-registering its torch ops warns that they are overridden
    importlib.reload(bnb_cpu_ops)
"""


@pytest.mark.slow
def test_importing_the_backends_prints_nothing_on_this_cpu():
    """Whatever this CPU's features, the real imports print no line the filter does not know."""
    import importlib.util

    import pytest

    present = [m for m in ("diffusers.quantizers.torchao.torchao_quantizer", "bitsandbytes", "optimum.quanto", "torchao") if importlib.util.find_spec(m.split(".")[0])]
    if not present:
        pytest.skip("no quantization library installed (the quant extra): nothing here logs at import")
    code = "import sdopt\n" + "".join(f"import {m}\n" for m in present)
    code += "from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline\n"  # what every command imports
    if "bitsandbytes" in present:
        code += _FORCE_BNB_AVX512_BF16
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as the suite runs: with a network, kernels would fetch instead
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300, env=env).stderr
    assert err.strip() == "", err


_COUNT_HUB_KERNEL_REQUESTS = """
import sys
import sdopt
import kernels
asked = []
def get_kernel(repo_id, *args, **kwargs):  # stands in for the download: nothing leaves this machine
    asked.append(repo_id)
    raise RuntimeError("no hub in this test")
kernels.get_kernel = get_kernel
""" + _FORCE_BNB_AVX512_BF16 + """
print(len(asked), sys.modules.get("kernels") is kernels, bnb_cpu_ops.has_avx512bf16(), natural)
"""


@pytest.mark.slow
@pytest.mark.parametrize("opt_in", ["", "1"])
def test_bitsandbytes_asks_the_hub_for_a_kernel_only_when_the_user_allows_it(opt_in):
    """Its AVX-512-BF16 branch (forced, so it runs on any CPU) downloads code at import unless stopped."""
    import importlib.util

    if not (importlib.util.find_spec("bitsandbytes") and importlib.util.find_spec("kernels")):
        pytest.skip("bitsandbytes or kernels not installed: nothing asks the hub")
    env = {**os.environ, "SDOPT_ALLOW_HUB_KERNELS": opt_in}
    run = subprocess.run([sys.executable, "-c", _COUNT_HUB_KERNEL_REQUESTS], capture_output=True, text=True, check=True, timeout=300, env=env)
    asked, kernels_still_importable, branch_taken, natural = run.stdout.split()
    assert branch_taken == "True"
    # Opted in, each pass through the branch asks once: the forced re-run, and the first import on a CPU with AVX-512-BF16.
    assert int(asked) == ((2 if natural == "True" else 1) if opt_in else 0)
    assert kernels_still_importable == "True"  # hidden only while bitsandbytes' module ran
    assert run.stderr.strip() == ""  # bitsandbytes' "Failed to load" line is filtered either way


_WHICH_TELEMETRY = """
import sdopt
import openvino.tools.ovc.convert_impl as convert_impl
import openvino.tools.ovc.telemetry_utils as telemetry_utils
from nncf.telemetry import wrapper
print(convert_impl.tm.__name__, telemetry_utils.tm.__name__, isinstance(wrapper.telemetry, wrapper.NNCFTelemetry))
import openvino_telemetry  # hidden only from the modules that would send
"""


@pytest.mark.parametrize("opt_in", ["", "1"])
def test_openvino_and_nncf_send_no_telemetry_unless_the_user_allows_it(opt_in):
    """OpenVINO's converter and NNCF take their no-op stubs: nothing is sent, nothing forks to send it."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("openvino", "nncf", "openvino_telemetry")):
        pytest.skip("OpenVINO, NNCF or openvino_telemetry not installed: nothing here sends")
    env = {**os.environ, "SDOPT_ALLOW_TELEMETRY": opt_in}
    for name in ("NNCF_CI", "NNCF_DEV"):  # NNCF's own switches, left unset: sdopt's guard is what is tested
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-c", _WHICH_TELEMETRY], capture_output=True, text=True, check=True, timeout=300, env=env)
    converter, utils, nncf_telemetry = run.stdout.split()
    if opt_in:
        assert (converter, utils, nncf_telemetry) == ("openvino_telemetry", "openvino_telemetry", "True")
    else:  # NNCF's stub is a MagicMock
        assert (converter, utils, nncf_telemetry) == ("openvino.tools.ovc.telemetry_stub", "openvino.tools.ovc.telemetry_stub", "False")


@pytest.mark.parametrize("opt_in", ["", "1"])
def test_onnx_runtime_sends_no_telemetry_unless_the_user_allows_it(opt_in):
    """ONNX Runtime 1.32 sends usage events to mobile.events.data.microsoft.com from a process holding a session a few
    seconds (every ONNX export's parity check made two such connections, through a logging proxy); its
    ORT_DISABLE_TELEMETRY=1 stops them (its Python disable_telemetry_events() does not), so import sdopt sets it."""
    env = {**os.environ, "SDOPT_ALLOW_TELEMETRY": opt_in}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    code = "import os, sdopt; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300, env=env).stdout.strip()
    assert out == ("None" if opt_in else "1")


def test_sdopt_load_says_every_load_option_a_backend_takes():
    """help(sdopt.load) said "Load any sdopt artifact ... as a Pipeline" and nothing of **options: a Python caller had
    to read the source to learn reshape, threads or deep_cache exist."""
    import sdopt
    from sdopt.runtime.backends import BACKENDS

    assert not {o for b in BACKENDS.values() for o in b.options if o not in sdopt.load.__doc__}
    assert "verify=False" in sdopt.load.__doc__ and "SdoptError" in sdopt.load.__doc__
    import inspect  # verify is a keyword of its own, as an IDE's completion and inspect show it (it hid in **options: qa71)

    assert inspect.signature(sdopt.load).parameters["verify"].default is True


def test_the_pipeline_sdopt_load_returns_says_what_it_does():
    """help(pipe) on what sdopt.load returns said 'class Pipeline(builtins.object)' and its __init__'s ten arguments, which
    no caller gives, and nothing of generate, request_defaults or close, the calls the README's Python example makes;
    pipe.request_defaults' type said only its field list."""
    from sdopt.runtime.pipeline import Pipeline
    from sdopt.runtime.request_defaults import RequestDefaults

    assert Pipeline.__doc__ and all(name in Pipeline.__doc__ for name in ("sdopt.load", "generate", "request_defaults", "close"))
    assert not RequestDefaults.__doc__.startswith("RequestDefaults(")


def test_python_dash_m_sdopt_runs_the_command():
    # `python -m sdopt` is how a user reaches the command when the venv's bin/ is not on PATH (a notebook, a script
    # run by another interpreter path): it said "'sdopt' is a package and cannot be directly executed".
    done = subprocess.run([sys.executable, "-m", "sdopt", "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("sdopt "), done.stdout + done.stderr
