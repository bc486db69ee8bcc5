"""torch.compile on the torch backend (sdopt.runtime.compiled), on the tiny model.

Dynamo's ``eager`` backend stands in for inductor here: it captures the same
graphs (so recompiles on a new shape show the same way) without inductor's code
generation, which takes ~40 s for even the tiny UNet on a 2-core CPU. Inductor's
own speed is measured by the bench (scripts/gpu_check.sh on a GPU)."""

import json

import numpy as np
import pytest

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.bench.artifacts import parse_artifact_arg
from sdopt.bench.runner import run_bench
from sdopt.bench.settings import BenchSettings
from sdopt.runtime.compiled import compiled_graphs

REQUEST = dict(prompt="a lighthouse at dawn", steps=2, height=64, width=64, seed=0, scheduler="euler")


def test_compiled_pipeline_agrees_and_recompiles_on_a_new_size(tiny_model, tiny_pipeline):
    reference = tiny_pipeline.generate(GenerateRequest(**REQUEST))
    pipe = sdopt.load(tiny_model, compile="eager", channels_last=True)
    before = compiled_graphs() or 0
    result = pipe.generate(GenerateRequest(**REQUEST))
    first = compiled_graphs()
    assert first - before == 2  # the UNet and the VAE decode
    # channels_last reorders the convolutions' sums: float32 rounding, relative to the latents' scale
    assert np.abs(result.latents - reference.latents).max() / np.abs(reference.latents).max() < 1e-5
    pipe.generate(GenerateRequest(**REQUEST))
    assert compiled_graphs() == first  # the same shape: no recompile
    pipe.generate(GenerateRequest(**{**REQUEST, "height": 72}))
    assert compiled_graphs() > first  # a new size recompiles
    settings = pipe.run_settings()
    assert settings["unet"]["compile"] == "eager" and settings["unet"]["channels_last"] is True
    assert settings["text_encoder"]["compile"] is None and settings["text_encoder"]["channels_last"] is False


@pytest.mark.parametrize("value, says", [("bogus", "choose an inductor mode"), ("reduce-overhead", "needs device='cuda'"),
                                         ("cudagraphs", "needs device='cuda'")])
def test_bad_compile_settings_are_refused_before_loading(tiny_model, value, says):
    with pytest.raises(SdoptError, match=says):
        sdopt.load(tiny_model, compile=value)


def test_compile_is_a_torch_option(tiny_onnx_artifact):
    with pytest.raises(SdoptError, match="does not take compile; torch does"):
        sdopt.load(tiny_onnx_artifact, compile="default")


def test_artifact_argument_syntax():
    # (path, precision, load options, request fields: PATH+guidance-end=F, tests/test_guidance.py)
    assert parse_artifact_arg("m@fp16+compile=max-autotune") == ("m", "fp16", {"compile": "max-autotune"}, {})
    assert parse_artifact_arg("m+compile") == ("m", None, {"compile": "default"}, {})
    assert parse_artifact_arg("m@bf16") == ("m", "bf16", {}, {})
    with pytest.raises(SdoptError, match="choose an inductor mode"):
        parse_artifact_arg("m+compile=fastest")


def test_bench_reports_compilation_and_recompiles(bench_report, tiny_model, tiny_onnx_artifact, tmp_path):
    """The session's bench (conftest) has a tiny+compile=eager row."""
    out, report = bench_report
    row = {a["name"]: a for a in report["artifacts"]}[f"{tiny_model.name}+compile=eager"]
    assert row["status"] == "ok", row.get("error")
    assert row["compiled"]["setting"] == "eager" and row["compiled"]["graphs_after_warmup"] >= 2
    assert row["compiled"]["recompiles_measured"] == 0  # the bench's one size: compiled in the warm-up only
    assert row["quality"]["psnr_db"] >= 40
    assert "torch.compile (compilation happens in the first generate" in (out / "report.md").read_text()
    assert json.loads((out / row["work_dir"] / "job.json").read_text())["load_options"] == {"compile": "eager"}
    settings = BenchSettings.resolve(None, prompts=["a"], seeds=[0], steps=2, height=64, width=64, warmup=0, runs=1)
    with pytest.raises(SdoptError, match="torch artifacts only"):
        run_bench([f"{tiny_onnx_artifact}+compile"], str(tiny_model), tmp_path / "r2", settings, progress=False)


def test_a_profile_entry_can_ask_for_compile(tmp_path):
    from sdopt.bench.build import build_one

    spec = {"name": "torch-fp16-compile", "backend": "torch", "precision": "fp16", "compile": "max-autotune"}
    assert build_one(spec, tmp_path / "sd15", tmp_path, 512, 512, "cuda", {}) == f"{tmp_path / 'sd15'}@fp16+compile=max-autotune"
