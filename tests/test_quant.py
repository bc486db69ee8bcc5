"""Weight quantization on the tiny model: every CPU row of the capability table, end to end.

Each supported CPU row quantizes the tiny checkpoint here; a fresh process then
loads every artifact (with the quantizers' ``quantize`` hooks made to fail, so
a serialized artifact provably loads without quantizing again), generates the
same request as fp32, and reports the PSNR against the fp32 image. The floors
come from measurement (docs/quantization.md): do not loosen them without a note
there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import pytest

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main
from sdopt.quant import QUANTIZERS, Quantizer, get_quantizer
from sdopt.quant.schemes import choose, rows, table

from conftest import SMALL

# PSNR floors (dB) vs the fp32 image of the same request, per backend:scheme: measured on the tiny
# model (torch 2.13.0, torchao 0.18.0, optimum-quanto 0.2.7, bitsandbytes 0.50.2) less 3 dB, rounded
# down. docs/quantization.md has the measurements; do not loosen a floor without a note there.
# (quanto:int8 also quantizes the VAE here, see OPTIONS, hence its lower value.)
PSNR_FLOOR = {
    "torchao:int8": 49.0,  # measured 52.7
    "torchao:int8-dynamic": 47.0,  # 50.0
    "torchao:fp8": 40.0,  # 43.9
    "quanto:int8": 46.0,  # 49.6 (UNet, text encoder and VAE)
    "quanto:int4": 28.0,  # 31.4
    "quanto:fp8": 37.0,  # 40.0
    "bnb:int8": 49.0,  # 52.0
    "bnb:nf4": 25.0,  # 28.9 with Conv2d in nf4 too (32.0 when it was Linear only)
}
REQUEST = {**SMALL, "steps": 2}
# One artifact also covers --components and --exclude: the VAE when asked, named layers left alone.
OPTIONS = {("quanto", "int8"): dict(components=["unet", "text_encoder", "vae"], exclude=["unet.conv_in", "*.conv_out"])}

CPU_ROWS = [r for r in table() if r.device == "cpu" and r.supported and QUANTIZERS[r.backend].accepts == "torch"]


def _available(backend: str) -> bool:
    return get_quantizer(backend).available()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    """One artifact per supported CPU row whose library is installed: {(backend, scheme): path}."""
    from sdopt.quant.run import quantize

    root = tmp_path_factory.mktemp("quant")
    out = {}
    for row in CPU_ROWS:
        if _available(row.backend):
            out[(row.backend, row.scheme)] = path = root / f"{row.backend}-{row.scheme}"
            quantize(tiny_model, row.scheme, path, backend=row.backend, **OPTIONS.get((row.backend, row.scheme), {}))
    if not out:
        pytest.skip("no quantization library installed: pip install 'sdopt[quant]'")
    return out


# --- the table ------------------------------------------------------------------------------
def test_table_declares_every_backend_scheme_and_device(capsys):
    keys = {r.key for r in table()}
    for backend in ("torchao", "quanto", "bnb"):
        for scheme in ("int8", "int8-dynamic", "int4", "nf4", "fp8"):
            for device in ("cpu", "cuda"):
                assert (backend, scheme, device) in keys
    assert all(r.reason for r in table())  # every row says why (not) or what to know
    assert main(["quantize", "--list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"torchao +int4 +cpu +no", out) and re.search(r"quanto +int4 +cpu +yes", out)
    assert "yes* = declared from the library's documentation" in out
    # CUDA rows that ran on a GPU lose their asterisk; the others keep it.
    assert re.search(r"torchao +int8 +cuda +yes ", out) and re.search(r"bnb +int8 +cuda +yes\*", out)


def test_backend_is_chosen_by_scheme_and_device():
    assert choose("int4", "cpu", "torch").backend == "quanto"
    assert choose("nf4", "cpu", "torch").backend == "bnb"
    assert choose("int8-dynamic", "cpu", "torch").backend == "torchao"
    assert choose("int8", "cuda:1", "torch").device == "cuda"


# --- round trip: quantize here, reload and generate in a fresh process --------------------------
_RELOAD = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    import numpy as np
    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quant import get_quantizer

    if os.environ.get("FORCE_NO_AVX512BF16") and importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes.nn.modules  # it asks the CPU itself (cpuid), not torch: forced here
        bitsandbytes.nn.modules.has_avx512bf16 = lambda: False

    def refuse(*args, **kwargs):
        raise AssertionError("a serialized artifact was quantized again at load")

    reference, request, artifacts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    for backend in {a["backend"] for a in artifacts}:
        get_quantizer(backend).implementation().quantize = refuse  # on the engine type
    def image(path):
        return np.asarray(sdopt.load(path).generate(GenerateRequest(**request)).images[0], dtype=float)
    ref = image(reference)
    out = {}
    for a in artifacts:
        img = image(a["path"])
        mse = ((ref - img) ** 2).mean()
        out[a["backend"] + ":" + a["scheme"]] = float(10 * np.log10(255**2 / max(mse, 1e-12)))
    import torch
    print(json.dumps({"psnr": out, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}))
    """
)


# The CPU paths the child runs. "native": whatever this CPU has. "avx2": torch's ATen kernels and
# bitsandbytes (its int8 matmul follows torch's capability; its nf4 kernel asks cpuid, forced in the
# child) take their AVX2 paths, so a machine with AVX-512 also runs those of an AVX2 machine. oneDNN
# is left alone: ONEDNN_MAX_CPU_ISA=AVX2 on a VNNI CPU is no AVX2 machine (torch still sees VNNI and
# picks an int8 path that then saturates: torchao int8-dynamic 31 dB instead of 50, docs/cpu-features.md).
# No CPU can be forced above what it has; tests/test_cpu_paths.py forces bitsandbytes' AVX-512-BF16
# path up in Python. docs/cpu-features.md lists every such branch.
CPU_PATHS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "FORCE_NO_AVX512BF16": "1"},
}


@pytest.mark.parametrize("cpu_path", list(CPU_PATHS))
def test_every_cpu_row_reloads_in_a_fresh_process_and_generates(tiny_model, quantized, capsys, cpu_path):
    artifacts = [{"backend": b, "scheme": s, "path": str(p)} for (b, s), p in quantized.items()]
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(tiny_model), json.dumps(REQUEST), json.dumps(artifacts)],
        capture_output=True,
        text=True,
        env={**os.environ, **CPU_PATHS[cpu_path]},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    psnr = out["psnr"]
    if cpu_path == "avx2":  # the forcing took (DEFAULT: a CPU without AVX2 at all)
        assert out["torch_cpu_capability"] in ("AVX2", "DEFAULT")
    with capsys.disabled():  # the numbers belong in the test output, passing or not
        print(f"\nPSNR vs fp32, tiny model (fresh process, {cpu_path} CPU paths: torch {out['torch_cpu_capability']}): "
              + ", ".join(f"{k} {v:.1f} dB (floor {PSNR_FLOOR[k]})" for k, v in psnr.items()))
    for key, value in psnr.items():
        assert value >= PSNR_FLOOR[key], f"{key}: PSNR {value:.1f} dB under its floor {PSNR_FLOOR[key]}"
    missing = {f"{r.backend}:{r.scheme}" for r in CPU_ROWS if _available(r.backend)} - set(psnr)
    assert not missing


def test_artifact_stores_quantized_weights_and_says_what_it_is(quantized, tiny_model, capsys):
    path = next(p for key, p in quantized.items() if key not in OPTIONS)
    data = json.loads((path / "sdopt.json").read_text())
    for name in ("unet", "text_encoder"):  # the defaults
        q = data["components"][name]["quantization"]
        assert q["serialized"] is True and q["layers"] > 0 and q["weights"] == f"{name}/quantized.safetensors"
        files = {f["path"] for f in data["components"][name]["files"]}
        assert files == {f"{name}/config.json", f"{name}/quantized.safetensors"}  # no fp32 weights left
    assert data["components"]["vae_decoder"].get("quantization") is None  # the VAE only when asked
    assert (path / "tokenizer").is_dir() and (path / "scheduler").is_dir() and (path / "model_index.json").is_file()
    assert data["source"]["fingerprint"] == json.loads((tiny_model / "sdopt.json").read_text())["source"]["fingerprint"]
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert " via " in out and "(quantized at load)" not in out


def test_manifest_records_what_each_quantizer_applied(quantized):
    """The recipe is built from the objects that quantized (torchao's configs, bnb's recipe) or read back
    from the quantized layers (quanto), never from a description kept beside them."""
    for (backend, scheme), path in quantized.items():
        components = json.loads((path / "sdopt.json").read_text())["components"]
        q = components["unet"]["quantization"]
        assert components["text_encoder"]["quantization"]["layer_types"] == ["Linear"]  # it has no convolutions
        recipe = q["options"]
        if backend == "torchao":
            from sdopt.quant.torchao import configs

            assert recipe == {t.__name__: repr(c) for t, c in configs(scheme).items()}
            assert set(recipe) == set(q["layer_types"])
        elif backend == "quanto":
            from sdopt.quant.quanto import QTYPES

            assert set(recipe) == set(q["layer_types"])
            assert {g["weights"] for groups in recipe.values() for g in groups} == {QTYPES[scheme]}
            if scheme == "int4":  # quanto groups 4-bit weights by 128, less where a layer is narrower
                assert 128 in {g["group_size"] for g in recipe["Linear"]}
        else:
            assert recipe["modules"] == (["Linear8bitLt"] if scheme == "int8" else ["Conv2d4bit", "Linear4bit"])
            assert recipe.get("quant_type") == ("nf4" if scheme == "nf4" else None)
        assert q["library"].split()[0] in {"torchao", "optimum-quanto", "bitsandbytes"}


def test_int4_unet_is_far_smaller(quantized, tiny_model):
    if ("quanto", "int4") not in quantized:
        pytest.skip("optimum-quanto not installed")
    size = lambda p: sum(f.stat().st_size for f in (p / "unet").glob("*.safetensors"))  # noqa: E731
    # The tiny UNet's layers are too narrow for the 128-wide groups to pay off fully; sd15's reach 13-14%.
    assert size(quantized[("quanto", "int4")]) < 0.25 * size(tiny_model)


def test_vae_when_asked_and_excluded_layers_stay_fp32(quantized):
    if ("quanto", "int8") not in quantized:
        pytest.skip("optimum-quanto not installed")
    from safetensors import safe_open

    out = quantized[("quanto", "int8")]
    data = json.loads((out / "sdopt.json").read_text())
    assert {n for n, c in data["components"].items() if c.get("quantization")} == {"unet", "text_encoder", "vae_decoder", "vae_encoder"}
    assert data["components"]["unet"]["quantization"]["exclude"] == ["unet.conv_in", "*.conv_out"]
    layers = {}
    for folder in ("unet", "vae"):
        with safe_open(out / folder / "quantized.safetensors", "pt") as f:
            layers[folder] = set(json.loads(f.metadata()["sdopt_layers"]))
    assert "conv_in" not in layers["unet"] and "conv_out" not in layers["unet"] and "decoder.conv_out" not in layers["vae"]
    assert {"time_embedding.linear_1", "down_blocks.0.resnets.0.conv1"} <= layers["unet"]
    assert "decoder.conv_in" in layers["vae"]  # only the patterns' layers were left alone


# --- the recipe path (a backend that cannot save its weights), with a fake quantizer ------------
FAKE_ROWS = rows("fake", ("int8", "cpu", True, False, ("Linear",), "test double: rounds Linear weights, stores the recipe"))
FAKE_CALLS: list[int] = []


def _fake_engine_type():
    from sdopt.quant.torch_weights import TorchWeights

    class FakeWeights(TorchWeights):
        def recipe(self, module, capability, layers):
            return {"round_to": "1/64"}

        def quantize(self, module, capability, layers, device):
            import torch

            FAKE_CALLS.append(len(layers))
            with torch.no_grad():
                for fqn in layers:
                    w = module.get_submodule(fqn).weight
                    w.copy_(torch.round(w * 64) / 64)
            return module

        def serialize(self, module, capability):
            raise AssertionError("the fake's row says it cannot serialize")

        deserialize = serialize

    return FakeWeights


def test_a_backend_that_cannot_serialize_stores_the_recipe_and_quantizes_at_load(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules[__name__], "FakeWeights", _fake_engine_type(), raising=False)
    fake = Quantizer(name="fake", module=f"{__name__}:FakeWeights", extra="quant", requires=("torch",), accepts="torch", capabilities=FAKE_ROWS)
    monkeypatch.setitem(QUANTIZERS, "fake", fake)
    FAKE_CALLS.clear()
    out = tmp_path / "recipe"
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--backend", "fake", "--components", "unet", "-o", str(out)]) == 0
    data = json.loads((out / "sdopt.json").read_text())
    q = data["components"]["unet"]["quantization"]
    assert q["serialized"] is False and "weights" not in q and q["options"] == {"round_to": "1/64"}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # the original weights, as they were
    assert "(quantized at load)" in capsys.readouterr().out
    assert len(FAKE_CALLS) == 1
    result = sdopt.load(out).generate(GenerateRequest(**REQUEST))
    assert FAKE_CALLS == [q["layers"], q["layers"]]  # quantized again at load, the same layers
    assert np.isfinite(result.latents).all()


def test_quantize_prints_the_artifacts_summary_alone_on_stdout(tiny_model, tmp_path, capsys):
    """Without --backend, quantize printed its note "backend: torchao (the first supported ...)" on stdout above the
    summary, so a script reading stdout got one line more than export's or inspect's; the note is on stderr."""
    from sdopt.inspect_artifact import describe, format_description

    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--components", "unet", "-o", str(out), "-q"]) == 0
    printed, said = capsys.readouterr()
    assert printed == format_description(describe(out)) + "\n" and "the first supported for int8 on cpu" in said


def test_a_quantize_its_disk_obviously_cannot_hold_is_refused_before_the_work(tiny_model, tmp_path, capsys, monkeypatch):
    """sd15's int8 artifact (1.3 GB) onto a 1 GiB disk was found not to fit only when the disk filled. The estimate
    counts the copied VAE whole and the quantized weights at the scheme's bits: refused at once below it."""
    from collections import namedtuple

    from sdopt import outputs
    from sdopt.manifest import read_manifest

    usage = namedtuple("usage", "total used free")
    size = read_manifest(tiny_model).size_bytes
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**30, 0, size // 8))  # less than int8 needs
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(out), "-q"]) == 2
    assert "this int8 artifact takes about" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**30, 0, size))  # the source's size: room enough
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(out), "-q"]) == 0
    assert read_manifest(out).size_bytes * 0.9 >= size // 8  # the artifact indeed takes more than was free


def test_a_torch_quantize_shows_a_bar_per_component_unless_quiet(tiny_model, tmp_path, capsys):
    """torchao, quanto and bitsandbytes quantized without a progress bar: sd15's nf4 quantize said nothing for 43 s
    (its UNet loaded, quantized and saved), then printed the summary."""
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(tmp_path / "int8")]) == 0
    bar = capsys.readouterr().err
    assert "quantizing to int8" in bar and "2/2" in bar  # the UNet and the text encoder
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(tmp_path / "quiet"), "-q"]) == 0
    assert "quantizing" not in capsys.readouterr().err


# --- bad input: a clear error, exit 2, nothing written --------------------------------------------
def _nothing_written(out):
    return not out.exists() and not any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scheme", "int3"], "unknown scheme 'int3'; known schemes: int8, int8-dynamic, int4, nf4, fp8"),
        (["--scheme", "int8", "--backend", "tensorrt"], "unknown quantization backend 'tensorrt'; known backends: torchao, quanto, bnb"),
        (["--scheme", "int4", "--backend", "torchao"], "is not supported: torchao 0.18's packed int4 layouts need CUDA kernels"),
        (["--scheme", "fp8", "--backend", "bnb"], "bitsandbytes has no fp8 weight type"),
        (["--scheme", "nf4", "--backend", "quanto"], "nf4 on cpu is supported by: bnb"),
        (["--scheme", "int8", "--components", "unet,vea"], "unknown component 'vea'; choose from: unet, text_encoder, text_encoder_2, vae"),
        (["--scheme", "int8", "--components", ","], "--components is empty"),
        (["--scheme", "int8", "--device", "tpu"], "unknown device 'tpu'"),
        (["--scheme", "int8", "--backend", "quanto", "--group-size", "64"], "--backend quanto does not take --group-size; nncf does"),
        (["--scheme", "int8", "--ratio", "0.5"], "--backend torchao does not take --ratio; nncf does"),
    ],
)
def test_bad_quantize_requests(tiny_model, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_model), "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert _nothing_written(out)


def test_errors_that_need_the_model_structure_still_write_nothing(tiny_model, tmp_path, capsys):
    if not _available("quanto"):
        pytest.skip("optimum-quanto not installed")
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--backend", "quanto", "--exclude", "unet.no_such_layer*", "-o", str(out)]) == 2
    assert "--exclude unet.no_such_layer* matches no Linear/Conv2d layer" in capsys.readouterr().err
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--backend", "quanto", "--device", "cuda", "-o", str(out)]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert _nothing_written(out)


def test_quantizing_a_quantized_artifact_is_refused(quantized, tmp_path, capsys):
    path = next(iter(quantized.values()))
    out = tmp_path / "twice"
    assert main(["quantize", str(path), "--scheme", "int8", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is already quantized" in err and "Quantize the original full-precision checkpoint" in err
    assert _nothing_written(out)


def test_missing_arguments_and_an_existing_output(tiny_model, tmp_path, capsys):
    assert main(["quantize", str(tiny_model)]) == 2
    assert "give MODEL, --scheme and -o OUT" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_quantized_components_refuse_another_precision(quantized):
    others = [path for (backend, _), path in quantized.items() if backend != "torchao"]
    if not others:
        pytest.skip("only torchao is installed, whose weights take half-precision activations")
    with pytest.raises(SdoptError, match="run with fp32 activations.*torchao's quantized weights also run in fp16/bf16"):
        sdopt.load(others[0], precision="bf16")


def test_torchao_weights_run_with_bf16_activations(quantized):
    # On a GPU fp32 compute costs int8 weights their speed (reports/cuda-h200/): torchao's run in half precision.
    path = quantized.get(("torchao", "int8"))
    if path is None:
        pytest.skip("torchao is not installed")
    request = sdopt.GenerateRequest(prompt="a red circle", steps=2, height=64, width=64, seed=0)
    fp32 = sdopt.load(path)
    bf16 = sdopt.load(path, precision="bf16")
    assert {str(p.dtype) for p in bf16.components["unet"].module.parameters() if not hasattr(p, "qdata")} == {"torch.bfloat16"}
    quantized_linear = [p for p in bf16.components["unet"].module.parameters() if type(p).__name__ in ("Int8Tensor", "IntxUnpackedToInt8Tensor")]
    assert quantized_linear, "the bf16 UNet still holds torchao's quantized weights"
    image = bf16.generate(request).images[0]
    a, b = np.asarray(fp32.generate(request).images[0]), np.asarray(image)
    assert bf16.precision == "bf16" and _psnr(a, b) > 25, _psnr(a, b)
    # The image's parameters say what made it: quantized weights, not "torch bf16" alone.
    from sdopt.infotext import parse_parameters

    assert parse_parameters(image.info["parameters"])["Backend"] == "torch bf16, int8 (torchao) weights"


def test_quantos_4bit_linears_stay_linear_layers_at_their_names(quantized, tiny_model):
    """quanto's 4-bit linears run outside inference mode (issue #304). A wrapping module did that and hid them from PEFT,
    which finds Linear layers by name: `generate --lora` on an int4 artifact failed with "LoRA ... does not fit this model
    (Target module OutsideInferenceMode() is not supported)", blaming a LoRA that fits (by hand, with the fix: int4 + the
    tiny LoRA at 0.8 vs fp32 + it, 33.3 dB). They stay Linear layers, at the checkpoint's names."""
    path = quantized.get(("quanto", "int4"))
    if path is None:
        pytest.skip("optimum-quanto is not installed")
    import torch

    def linears(module):
        return {name for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}

    fp32, int4 = (sdopt.load(p).components["text_encoder"].module for p in (tiny_model, path))
    assert linears(int4) == linears(fp32)
    assert any(type(layer).__name__ == "QLinearOutsideInferenceMode" for layer in int4.modules())  # and still guarded


def test_cli_error_has_no_traceback(tiny_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sdopt.cli", "quantize", str(tiny_model), "--scheme", "int4", "--backend", "bnb", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "use --scheme nf4, or --backend quanto" in proc.stderr


def test_a_component_sharing_files_with_one_asked_for_comes_along_and_is_named(tiny_model):
    from sdopt.manifest import read_manifest
    from sdopt.quant.run import select_components

    manifest = read_manifest(tiny_model)
    chosen, companions = select_components(manifest, ["vae_decoder"])
    assert set(chosen) == {"vae_decoder", "vae_encoder"} and companions == {"vae_encoder": "vae_decoder"}  # one vae/ folder
    assert select_components(manifest, ["vae"])[1] == {} and select_components(manifest, None)[1] == {}


def test_a_damaged_quantized_weights_record_or_file_is_one_error(tiny_model, tmp_path):
    """A serialized torchao component whose manifest lacks quantization.weights (sdopt.json edited by hand: the
    schema leaves the key optional, so inspect verified it) was a KeyError traceback at load; a weights entry naming
    a file that is not safetensors, or a truncated file loaded with verify=False, a SafetensorError traceback."""
    import shutil

    import torch

    from sdopt.manifest import ComponentEntry
    from sdopt.quant.torch_weights import WEIGHTS_NAME

    if not _available("torchao"):
        pytest.skip("torchao is not installed")
    engine = get_quantizer("torchao").engine()
    (tmp_path / "unet").mkdir()
    shutil.copy(tiny_model / "unet" / "config.json", tmp_path / "unet" / "config.json")
    record = {"scheme": "int8", "backend": "torchao", "serialized": True}
    with pytest.raises(SdoptError, match="records stored weights but not their file .*quantize the original checkpoint again"):
        engine.load_component("unet", tmp_path, ComponentEntry(folder="unet", files=[], quantization=record), torch.float32, "cpu")
    for name in ("config.json", WEIGHTS_NAME):
        (tmp_path / "unet" / WEIGHTS_NAME).write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a"')  # truncated header
        entry = ComponentEntry(folder="unet", files=[], quantization={**record, "weights": f"unet/{name}"})
        with pytest.raises(SdoptError, match=f"cannot read unet's quantized weights .*unet/{name}: SafetensorError.*damaged"):
            engine.load_component("unet", tmp_path, entry, torch.float32, "cpu")


@pytest.mark.parametrize("backend", ["bnb", "quanto", "torchao"])
def test_a_quantized_load_beside_a_torch_load_in_another_thread_keeps_its_weights(backend, tiny_model, tmp_path, monkeypatch):
    # A torch load builds its modules under init_empty_weights, which patches register_parameter for the whole process:
    # a quantized artifact deserialized in another thread meanwhile had its new Parameters put on the meta device
    # ("Cannot copy out of meta tensor"), and bnb's own init_empty_weights interleaved with it left the patch on for good.
    import threading

    import torch
    from accelerate import init_empty_weights

    from sdopt.quant.run import quantize
    from sdopt.runtime.library_lock import LIBRARY_LOCK

    if not _available(backend):
        pytest.skip(f"{backend} is not installed")
    artifact = tmp_path / backend
    quantize(tiny_model, "int8", artifact, backend=backend, components=["unet"])
    engine = type(get_quantizer(backend).engine())
    deserializing, building, deserialized = threading.Event(), threading.Event(), threading.Event()
    deserialize = engine.deserialize

    def paused(self, *args, **kwargs):  # the loader stops where the other thread's build can begin
        deserializing.set()
        # A loader holding the lock cannot be overtaken (the build waits for it): waiting on the build then only
        # ran out its timeout.
        if not LIBRARY_LOCK._is_owned():
            building.wait(timeout=2)
        try:
            return deserialize(self, *args, **kwargs)
        finally:
            deserialized.set()

    monkeypatch.setattr(engine, "deserialize", paused)
    loaded, errors = [], []

    def load():
        try:
            loaded.append(sdopt.load(artifact))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    def build_like_a_torch_load():
        with LIBRARY_LOCK, init_empty_weights():
            building.set()
            # The patch stays on while the loader deserializes, not for its whole load: the rest of the load waits on
            # the lock this thread holds, and its join ran out its 10 s.
            deserialized.wait(timeout=10)

    register_parameter = torch.nn.Module.register_parameter
    loader, other = threading.Thread(target=load), threading.Thread(target=build_like_a_torch_load)
    loader.start()
    assert deserializing.wait(timeout=60)
    other.start()
    other.join(timeout=60)
    loader.join(timeout=60)
    assert not errors, errors
    assert torch.nn.Module.register_parameter is register_parameter
    assert loaded[0].generate(GenerateRequest(**REQUEST)).images


def test_a_read_only_quanto_package_folder_builds_the_int4_kernel_in_the_users_cache(tiny_model, tmp_path, monkeypatch):
    """On a read-only install (a root-owned venv run by another user) optimum-quanto could not lock its int4 CPU
    kernel's build folder in its package, and every int4 load ended in a PermissionError traceback. It is built in the
    user's cache folder instead (from a copy of the kernel already built), or one line says which variable to set.
    Root is not refused by chmod, so quanto's build call is refused for its package folder here, as there."""
    pytest.importorskip("optimum.quanto")
    path = tmp_path / "int4"
    assert main(["quantize", str(tiny_model), "--scheme", "int4", "--backend", "quanto", "-o", str(path), "--quiet"]) == 0
    from optimum.quanto.library.extensions import extension, get_extension

    kernel = get_extension("quanto_cpp")
    package_build, real_load = kernel.build_directory, extension.load

    def load(*args, build_directory, **kwargs):
        if build_directory == package_build:
            raise PermissionError(13, "Permission denied", os.path.join(build_directory, "lock"))
        # What a build in the cache folder makes is the kernel already built in the package: torch's extension build
        # compiled the copy again (its paths changed), 42 s of the suite's time for what this test does not check
        return real_load(*args, build_directory=package_build, **kwargs)

    monkeypatch.setattr(extension, "load", load)
    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.setattr(kernel, "build_directory", package_build)  # put back after the test
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(SdoptError, match="set SDOPT_CACHE_DIR to a writable folder"):
        sdopt.load(path)
    monkeypatch.setattr(kernel, "build_directory", package_build)
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "cache"))
    sdopt.load(path)
    assert kernel.build_directory.startswith(str(tmp_path / "cache" / "quanto"))
    assert os.listdir(kernel.build_directory)  # the package's built kernel, copied there to build from


def test_a_source_replaced_while_it_is_quantized_writes_no_artifact(tiny_model, tmp_path, monkeypatch):
    """init-model or export --force into the folder being quantized renames a whole new model in: the quantized
    components came from the old one, the untouched ones (the VAE) were copied from the new one under the old one's
    sha256, and quantize said it was done; the artifact then failed its own verification at every load ("changed or
    corrupted after export"). Now the quantize says the source was replaced, and leaves nothing."""
    from sdopt.quant import run
    from sdopt.zoo import write_model

    if not _available("torchao"):
        pytest.skip("torchao is not installed")
    source = tmp_path / "model"
    shutil.copytree(tiny_model, source)
    newer = write_model("tiny", tmp_path / "newer", seed=1, progress=False)
    copy_untouched = run.copy_untouched

    def replaced_first(*args):  # another command's --force into the source lands between the quantizing and the copying
        source.rename(tmp_path / "older")
        Path(newer).rename(source)
        return copy_untouched(*args)

    monkeypatch.setattr(run, "copy_untouched", replaced_first)
    with pytest.raises(SdoptError, match="model was replaced by another command while this quantize read it"):
        run.quantize(source, "int8", tmp_path / "out", backend="torchao", components=["unet"], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "older"]
