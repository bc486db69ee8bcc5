"""What sdopt guarantees about bad input and faults (docs/guarantees.md), one regression test per finding.

Each test here failed before the fix it holds (the numbers are the findings'
in that issue: 1 --force, 2 paths in manifests, 3 the gate, 4 integrity,
5 non-finite numbers, 6 output paths, 7 leftovers, 8 the minor ones).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main

from conftest import SMALL

FAST = ["--steps", "2", "--height", "64", "--width", "64", "-q"]


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """A private copy of the tiny model that a test may damage."""
    path = tmp_path / "m"
    shutil.copytree(tiny_model, path)
    return path


def _manifest(path):
    return json.loads((path / "sdopt.json").read_text())


def _write_manifest(path, data):
    (path / "sdopt.json").write_text(json.dumps(data))


# --- 1. --force never destroys the input, a folder holding it, or files sdopt did not write -------
def test_force_refuses_to_replace_the_input_itself(model_copy, capsys):
    before = sorted(p.name for p in model_copy.rglob("*"))
    assert main(["export", str(model_copy), "--to", "onnx", "-o", str(model_copy), "--force"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(["quantize", str(model_copy), "--scheme", "int8", "-o", str(model_copy), "--force"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert sorted(p.name for p in model_copy.rglob("*")) == before


def test_force_refuses_a_folder_that_contains_the_input(tiny_model, tmp_path, capsys):
    nest = tmp_path / "nest"
    shutil.copytree(tiny_model, nest / "in")
    (nest / "keep.txt").write_text("x")
    assert main(["export", str(nest / "in"), "--to", "onnx", "-o", str(nest), "--force"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert (nest / "keep.txt").is_file() and (nest / "in" / "sdopt.json").is_file()


def test_force_refuses_a_folder_with_files_sdopt_did_not_write(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--components", "unet", "-o", str(out)]) == 0
    assert (out / ".sdopt-files").is_file()
    (out / "notes.txt").write_text("mine")
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--components", "unet", "-o", str(out), "--force"]) == 2
    assert "1 file(s) sdopt did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()  # what sdopt wrote, and only that: --force replaces it
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--components", "unet", "-o", str(out), "--force"]) == 0


def test_force_refuses_a_folder_sdopt_did_not_write(tiny_model, tmp_path, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"\xff\xd8")
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(mine), "--force"]) == 2
    assert "no .sdopt-files list" in capsys.readouterr().err
    assert (mine / "a.jpg").is_file()


# --- 2. nothing a manifest names may lie outside the artifact --------------------------------------
@pytest.mark.parametrize(
    "mutate,what",
    [
        (lambda d: d["components"]["unet"].update(folder="../../outside/unet"), "unet's folder"),
        (lambda d: d.update(tokenizer="../../outside/tok"), "the tokenizer folder"),
        (lambda d: d["components"]["unet"]["files"].append({"path": "/etc/hostname", "size_bytes": 1, "sha256": "0" * 64}), "a file of unet"),
        (lambda d: d.update(scheduler="C:\\scheduler"), "the scheduler folder"),
    ],
)
def test_manifest_paths_outside_the_artifact_are_refused(model_copy, capsys, mutate, what):
    data = _manifest(model_copy)
    mutate(data)
    _write_manifest(model_copy, data)
    with pytest.raises(SdoptError, match=f"{what} .* is not a path inside the artifact"):
        sdopt.load(model_copy)
    assert main(["inspect", str(model_copy)]) == 2
    assert "is not a path inside the artifact" in capsys.readouterr().err


def test_a_symlink_out_of_the_artifact_is_refused(model_copy, tmp_path):
    outside = tmp_path / "outside-tokenizer"
    shutil.move(str(model_copy / "tokenizer"), outside)
    (model_copy / "tokenizer").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SdoptError, match="links outside the artifact"):
        sdopt.load(model_copy)


@pytest.mark.parametrize("sub, name", [("tokenizer", "vocab.json"), ("scheduler", "scheduler_config.json")])
def test_a_file_in_the_tokenizer_or_scheduler_folder_linked_outside_is_refused(model_copy, tmp_path, sub, name):
    """Only the folders were checked: a tokenizer.json or scheduler config inside them linked to a file outside the
    artifact was read as the model's own (walk qa52)."""
    outside = tmp_path / f"outside-{name}"
    shutil.move(str(model_copy / sub / name), outside)
    (model_copy / sub / name).symlink_to(outside)
    with pytest.raises(SdoptError, match=re.escape(f"{model_copy / sub / name} (a file of the {sub}) links outside the artifact")):
        sdopt.load(model_copy)


# --- 3. the gate never passes a report without numbers, never crashes on a malformed one ----------
@pytest.fixture
def ci_report():
    from pathlib import Path

    return json.loads((Path(__file__).parents[1] / "reports" / "ci" / "baselines" / "avx2-fma.json").read_text())


def test_gate_cannot_judge_a_report_without_its_numbers(ci_report, tmp_path, capsys):
    stripped = json.loads(json.dumps(ci_report))
    for artifact in stripped["artifacts"]:
        for key in ("latency_s", "latency_ratio_to_reference", "quality"):
            artifact.pop(key, None)
    (tmp_path / "r.json").write_text(json.dumps(stripped))
    (tmp_path / "base.json").write_text(json.dumps(ci_report))
    code = main(["gate", str(tmp_path / "r.json"), "--baseline", str(tmp_path / "base.json"), "--rules", _ci_rules()])
    out = capsys.readouterr().out
    assert code == 2 and "CANNOT JUDGE" in out and "MISSING" in out and "PASS" not in out, out


def _ci_rules() -> str:
    from pathlib import Path

    return str(Path(__file__).parents[1] / "reports" / "ci" / "rules.toml")


@pytest.mark.parametrize(
    "report",
    [
        {"schema": "sdopt.bench.report", "schema_version": 1},
        {"schema": "sdopt.bench.report", "artifacts": [{"name": "a"}], "reference": "b"},
        {"schema": "sdopt.bench.report", "artifacts": "x", "reference": "a"},
        [1, 2, 3],
    ],
)
def test_gate_refuses_a_malformed_report_with_exit_2(tmp_path, capsys, report):
    (tmp_path / "r.json").write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-m", "sdopt.cli", "gate", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("sdopt: error:"), proc.stderr


# --- 4. integrity checks are never skipped silently ----------------------------------------------
def test_a_file_removed_from_the_manifest_is_not_loaded_unchecked(model_copy):
    data = _manifest(model_copy)
    data["components"]["unet"]["files"] = [f for f in data["components"]["unet"]["files"] if not f["path"].endswith(".safetensors")]
    _write_manifest(model_copy, data)
    with pytest.raises(SdoptError, match="not listed in sdopt.json, so it cannot be verified"):
        sdopt.load(model_copy)


@pytest.mark.parametrize("moment", ["read_manifest", "verify_files"])
def test_an_artifact_replaced_while_it_loads_is_loaded_again_whole(model_copy, tmp_path, monkeypatch, moment):
    """An export --force into the folder being loaded renames a whole new artifact in: replaced after its manifest was
    read, the load said the old manifest's "does not match the sha256 ... export the artifact again" of files that were
    whole; after its files were verified, it loaded the new weights unverified under the old manifest, a mix of the
    two. It now loads the artifact that is there, whole and verified."""
    from sdopt.manifest import Manifest, read_manifest
    from sdopt.runtime import load as loading
    from sdopt.zoo import write_model

    newer = write_model("tiny", tmp_path / "newer", seed=1, progress=False)
    replaced = {}

    def replacing(real):
        def then_replaced(*args):
            result = real(*args)
            if not replaced:  # another command's export --force lands now
                replaced["old"] = model_copy.rename(tmp_path / "old")
                Path(newer).rename(model_copy)
            return result
        return then_replaced

    if moment == "read_manifest":
        monkeypatch.setattr(loading, "read_manifest", replacing(loading.read_manifest))
    else:
        monkeypatch.setattr(Manifest, "verify_files", replacing(Manifest.verify_files))
    pipe = sdopt.load(model_copy)
    assert replaced and pipe.manifest.artifact_id == read_manifest(model_copy).artifact_id != read_manifest(replaced["old"]).artifact_id


def test_inspect_verifies_and_says_so(model_copy, capsys):
    assert main(["inspect", str(model_copy)]) == 0
    assert "verified   yes:" in capsys.readouterr().out
    weights = next((model_copy / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    assert main(["inspect", str(model_copy)]) == 2
    assert "does not match the sha256" in capsys.readouterr().err
    assert main(["inspect", str(model_copy), "--no-verify"]) == 0
    assert "verified   no (--no-verify)" in capsys.readouterr().out


def test_inspect_of_an_artifact_replaced_as_it_reads_says_so_not_corrupted(model_copy, tmp_path, monkeypatch, capsys):
    """`sdopt inspect` while an export --force renamed a new artifact in: it checked the new files against the manifest it
    had just read and said they were "changed or corrupted after export; export the artifact again"."""
    from sdopt import inspect_artifact
    from sdopt.zoo import write_model

    newer = write_model("tiny", tmp_path / "newer", seed=1, progress=False)
    read_manifest = inspect_artifact.read_manifest

    def then_replaced(folder):  # another command's export --force lands now
        manifest = read_manifest(folder)
        model_copy.rename(tmp_path / "older")
        newer.rename(model_copy)
        return manifest

    monkeypatch.setattr(inspect_artifact, "read_manifest", then_replaced)
    assert main(["inspect", str(model_copy)]) == 2
    err = capsys.readouterr().err
    assert "was replaced by another command while this inspect read it" in err and "corrupted" not in err


def test_inspect_and_load_refuse_an_artifact_without_tokenizer(model_copy, capsys):
    shutil.rmtree(model_copy / "tokenizer")
    assert main(["inspect", str(model_copy)]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_a_folder_without_sdopt_json_says_once_that_it_is_unverified(model_copy):
    (model_copy / "sdopt.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdopt.load(model_copy)
    assert sum("loaded unverified" in str(w.message) for w in caught) == 1


def test_a_damaged_folder_without_sdopt_json_is_one_clear_error(model_copy, tiny_onnx_artifact, tmp_path, capsys):
    """Nothing records the hashes of a plain Diffusers or Optimum folder, so damage shows only when it loads: a truncated
    weights file, a missing config.json, a truncated graph each give one line naming the file (they were tracebacks)."""
    (model_copy / "sdopt.json").unlink()
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(kept[:1000])
    assert main(["generate", str(model_copy), "-p", "x", *FAST, "-o", str(tmp_path / "a.png")]) == 2
    assert "cannot load unet from" in capsys.readouterr().err
    weights.write_bytes(kept)
    (model_copy / "text_encoder" / "config.json").unlink()
    with pytest.raises(SdoptError, match="cannot load text_encoder: .*text_encoder has no config.json"):
        sdopt.load(model_copy)

    onnx = tmp_path / "onnx"
    shutil.copytree(tiny_onnx_artifact, onnx)
    (onnx / "sdopt.json").unlink()
    (onnx / ".sdopt-files").unlink()
    graph = onnx / "unet" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100_000])
    with pytest.raises(SdoptError, match="cannot read .*unet/model.onnx: not a complete ONNX graph"):
        sdopt.load(onnx)


def test_a_damaged_tokenizer_is_one_clear_error(tiny_model, tmp_path):
    """The tokenizer's files carry no hashes: a tokenizer.json that is not JSON (damaged, or a link to another file)
    was a JSONDecodeError traceback from generate, export and serve."""
    from sdopt.runtime.load import load_tokenizer

    shutil.copytree(tiny_model / "tokenizer", tmp_path / "tokenizer")
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("garbage{")
    with pytest.raises(SdoptError, match=r"cannot read the tokenizer in .*tokenizer: JSONDecodeError: .*download or export it again"):
        load_tokenizer(tmp_path / "tokenizer")


def test_a_folder_of_fp16_variant_weights_loads(model_copy, tiny_pipeline):
    """The Hub's variant layout (NAME.fp16.safetensors and no plain file) is read as Diffusers reads it with variant="fp16"."""
    (model_copy / "sdopt.json").unlink()
    for folder in ("unet", "vae"):
        weights = model_copy / folder / "diffusion_pytorch_model.safetensors"
        weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    request = GenerateRequest(**SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = sdopt.load(model_copy).generate(request).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(tiny_pipeline.generate(request).images[0]))  # the same weights, renamed


def test_a_folder_saved_from_an_img2img_pipeline_is_read_as_its_family(model_copy):
    """StableDiffusionImg2ImgPipeline.save_pretrained writes the same modules as the text-to-image pipeline; its
    model_index.json was refused as a pipeline sdopt does not run (qa69). SDXL's img2img class (its refiner) stays out."""
    from sdopt.inspect_artifact import describe

    (model_copy / "sdopt.json").unlink()
    index = json.loads((model_copy / "model_index.json").read_text())
    (model_copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))
    assert describe(model_copy)["family"] == "stable-diffusion"
    (model_copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(SdoptError):
        describe(model_copy)


def test_a_folder_of_sharded_fp16_variant_weights_loads(model_copy):
    """save_pretrained(variant="fp16") shards as NAME.fp16-00001-of-00002.safetensors: read as one variant, not as two
    (the loader asked for diffusion_pytorch_model.safetensors and called the checkpoint damaged)."""
    from safetensors.torch import load_file, save_file

    from sdopt.source import variant_of

    assert [variant_of(n) for n in ("model.safetensors", "model-00001-of-00002.safetensors", "model.fp16.safetensors",
                                    "diffusion_pytorch_model.fp16-00002-of-00002.safetensors")] == [None, None, "fp16", "fp16"]
    (model_copy / "sdopt.json").unlink()
    plain = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(plain)
    names = sorted(tensors)
    shards = {f"diffusion_pytorch_model.fp16-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, model_copy / "unet" / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(json.dumps(index))
    plain.unlink()
    from sdopt.runtime.torch import load_pretrained

    loaded = load_pretrained("unet", model_copy / "unet").state_dict()
    assert all(loaded[k].equal(tensors[k]) for k in names)  # every shard read, as Diffusers reads it with variant="fp16"
    # A download cut short (a shard, or the index, missing) passed sdopt inspect; only a load failed (qa69)
    from sdopt.inspect_artifact import describe

    assert describe(model_copy)["inferred"]
    second = model_copy / "unet" / "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"
    second.rename(model_copy / "kept")
    with pytest.raises(SdoptError, match=r"index.fp16.json names diffusion_pytorch_model.fp16-00002-of-00002.safetensors, which is not there"):
        describe(model_copy)
    (model_copy / "kept").rename(second)
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").unlink()
    with pytest.raises(SdoptError, match="without their .safetensors.index.json: the download is incomplete"):
        describe(model_copy)


# --- 5. non-finite and out-of-range numbers; broken images are flagged, not saved -----------------
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e9"])
def test_non_finite_or_huge_guidance_is_refused_before_any_work(tiny_model, tmp_path, capsys, value):
    out = tmp_path / "x.png"
    assert main(["generate", str(tiny_model), "-p", "x", f"--guidance={value}", "-o", str(out), *FAST]) == 2
    assert "must be a finite number from 0 to 50" in capsys.readouterr().err
    assert not out.exists()


def test_a_black_or_nan_image_is_flagged_and_not_saved(tiny_model, tmp_path, capsys, monkeypatch):
    from sdopt.runtime import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "to_images", lambda decoded: _black(decoded))
    result = sdopt.load(tiny_model).generate(GenerateRequest(**SMALL))
    assert result.problems == ["image 0: the image is all black"]
    out = tmp_path / "x.png"
    assert main(["generate", str(tiny_model), "-p", "x", "-o", str(out), *FAST]) == 3
    assert "produced no usable image" in capsys.readouterr().err and not out.exists()


def _black(decoded):
    from PIL import Image

    return [Image.fromarray(np.zeros((decoded.shape[2], decoded.shape[3], 3), dtype=np.uint8)) for _ in range(decoded.shape[0])]


def test_nan_latents_are_flagged(tiny_pipeline, monkeypatch):
    unet = tiny_pipeline.components["unet"]
    monkeypatch.setitem(tiny_pipeline.components, "unet", lambda **kw: {"out_sample": np.full_like(unet(**kw)["out_sample"], np.nan)})
    result = tiny_pipeline.generate(GenerateRequest(**SMALL))
    assert result.problems and "NaN" in result.problems[0]


def _overflow_the_decoder(pipe, monkeypatch):
    """The pipeline's VAE decoder giving NaN in a corner of every image, as an overflowing fp16 VAE does."""
    decoder = pipe.components["vae_decoder"]

    def overflowing(**kw):
        sample = decoder(**kw)["sample"].copy()
        sample[:, :, :8, :8] = np.nan
        return {"sample": sample}

    monkeypatch.setitem(pipe.components, "vae_decoder", overflowing)


def test_nan_pixels_from_the_decoder_are_flagged(tiny_pipeline, monkeypatch):
    """Sound latents and a decoder that overflows in places (an fp16 VAE): the NaN pixels were cast to black ones,
    the image was not all black, and it counted as a success; all NaN read 'the image is all black', after numpy's
    'invalid value encountered in cast' warning."""
    import warnings

    _overflow_the_decoder(tiny_pipeline, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = tiny_pipeline.generate(GenerateRequest(**SMALL))
    assert result.problems == ["image 0: the VAE decoder gave NaN or inf pixels (saved, they would be black)"]


def test_the_bench_fails_a_row_whose_decoder_gave_nan_pixels(tiny_model, tiny_pipeline, monkeypatch, tmp_path):
    """The bench judged broken outputs from the saved files alone, where NaN pixels are black ones: an image partly NaN
    was an ok row. The worker passes on what the pipeline found, and the row fails with it."""
    from sdopt.bench.artifacts import Entry
    from sdopt.bench.assemble import _summarise
    from sdopt.bench.worker import measure

    _overflow_the_decoder(tiny_pipeline, monkeypatch)
    monkeypatch.setattr(sdopt, "load", lambda *a, **k: tiny_pipeline)
    job = {"output_dir": str(tmp_path / "raw" / "x"), "path": str(tiny_model), "device": "cpu", "precision": None, "prompts": ["a fox"],
           "seeds": [0], "steps": 2, "guidance_scale": 7.5, "height": 64, "width": 64, "scheduler": "euler", "warmup": 1, "runs": 1,
           "max_seconds": None}
    (tmp_path / "raw" / "x").mkdir(parents=True)
    raw = {**measure(job), "work_dir": "raw/x"}
    row = _summarise(Entry("x", tiny_model, tiny_pipeline.manifest), raw, None, tmp_path, None, {})
    assert row["status"] == "failed" and "the VAE decoder gave NaN or inf pixels" in row["error"], row.get("error")


# --- 6. the output path is checked before the work ------------------------------------------------
def test_output_path_is_checked_before_loading(tiny_model, tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("loaded before the output path was checked")

    monkeypatch.setattr(sdopt, "load", never)
    assert main(["generate", str(tiny_model), "-p", "x", "-o", str(tmp_path), *FAST]) == 2
    assert "is a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root): the permission case cannot be shown")
        assert main(["generate", str(tiny_model), "-p", "x", "-o", str(locked / "x.png"), *FAST]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc: a folder no one, root included, may create files in")
def test_a_place_that_takes_no_files_is_refused_before_the_work(tiny_model, capsys, monkeypatch):
    """os.access says root may write anywhere: generate made its image and then died in mkdir with a traceback, bench
    and init-lora the same. A file is now created and removed there first."""
    def never(*a, **k):
        raise AssertionError("loaded before the output path was checked")

    monkeypatch.setattr(sdopt, "load", never)
    for argv in (["generate", str(tiny_model), "-p", "x", *FAST, "-o", "/proc/sdopt-nope/a.png"],
                 ["bench", str(tiny_model), "--steps", "1", "-o", "/proc/sdopt-nope/report"],
                 ["init-lora", str(tiny_model), "/proc/sdopt-nope/l.safetensors"]):
        assert main(argv) == 2, argv
        assert "/proc does not take new files" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc: a folder no one, root included, may create files in")
def test_distill_optimize_and_a_work_folder_that_takes_no_files_are_refused_before_the_work(tiny_model, tmp_path, capsys, monkeypatch):
    """distill-decoder and optimize write their output at the end: -o /proc/... passed os.access (root) and distill
    trained for minutes before failing; optimize and bench --build-from died in mkdir of their work folder with a
    FileNotFoundError traceback."""
    import sdopt.runtime.load

    def never(*a, **k):
        raise AssertionError("loaded before the output path was checked")

    monkeypatch.setattr(sdopt.runtime.load, "load", never)
    for argv, says in ((["distill-decoder", str(tiny_model), "-o", "/proc/sdopt-nope/d"], "/proc does not take new files"),
                       (["optimize", str(tiny_model), "--steps", "1", "-o", "/proc/sdopt-nope/o"], "/proc does not take new files"),
                       (["optimize", str(tiny_model), "--steps", "1", "-o", str(tmp_path / "o"), "--work", "/proc/sdopt-nope/w"], None),
                       (["bench", "--profile", "cpu-generic", "--build-from", str(tiny_model), "--work", "/proc/sdopt-nope/w",
                         "--steps", "1", "-o", str(tmp_path / "b")], None)):
        assert main(argv) == 2, argv
        assert (says or "cannot make the work folder /proc/sdopt-nope/w") in capsys.readouterr().err


# --- 7. a killed export's leftovers are removed by the next run and by `sdopt clean` -------------
# What an ONNX export imports (torch, Diffusers, transformers, onnx ...: ~7 s of a cold process's ~11 s on 2 cores), imported
# once by the fork server the killed exports are forked from: each is still a process of its own that SIGKILL ends, but its
# time is the export's own work, not the imports.
_EXPORT_PRELOADS = ["sdopt.cli", "sdopt.export.onnx", "sdopt.runtime.onnxruntime", "diffusers.models.autoencoders", "diffusers.models.unets",
                    "transformers.models.clip"]


@pytest.fixture
def export_forks():
    """multiprocessing's fork server with what an export imports preloaded, stopped after the test: it holds torch and
    Diffusers, and would otherwise live as long as this pytest process."""
    import multiprocessing
    import multiprocessing.forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_EXPORT_PRELOADS)
    yield context
    multiprocessing.forkserver._forkserver._stop()  # the module's own server; no public call stops it


def _exit_with_main(argv):
    sys.exit(main(argv))


def _forked_export(context, model, out):
    """`sdopt export MODEL --to onnx -o OUT --force` in a process forked from the fork server of `context`."""
    proc = context.Process(target=_exit_with_main, args=(["export", str(model), "--to", "onnx", "-o", str(out), "--force"],))
    proc.start()
    return proc


def _temp_folders(parent, name):
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


def _marker(folder, pid):
    import socket

    folder.mkdir()
    (folder / "unet").mkdir()
    (folder / ".sdopt-incomplete").write_text(f"an sdopt command was writing this folder and did not finish: pid {pid} host {socket.gethostname()}\n")


def test_sdopt_clean_removes_only_dead_writers_folders(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60)
    _marker(tmp_path / ".art.tmp-dead", int(gone.stdout))  # its writer has exited
    _marker(tmp_path / ".art.tmp-alive", os.getpid())  # its writer (this process) still runs
    (tmp_path / ".art.tmp-notsdopt").mkdir()  # looks like ours, has no marker: not sdopt's
    assert main(["clean", str(tmp_path), "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and (tmp_path / ".art.tmp-dead").exists()
    assert main(["clean", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"removed {tmp_path / '.art.tmp-dead'}" in out
    assert f"left {tmp_path / '.art.tmp-alive'}: its writer is still running (pid {os.getpid()} on this machine)" in out
    assert {p.name for p in tmp_path.iterdir()} == {".art.tmp-alive", ".art.tmp-notsdopt"}
    assert main(["clean", str(tmp_path)]) == 0  # nothing left to remove: the live one is still said, never "nothing to clean"
    out = capsys.readouterr().out
    assert "left" in out and "nothing to clean" not in out


def test_sdopt_clean_leaves_a_users_backup_named_like_a_moved_aside_artifact(tmp_path, capsys):
    """A --force swap moves the old output into .NAME.old-XXXX/NAME; `sdopt clean` took any such folder holding one
    artifact beside an existing NAME for one, and removed a user's own backup (.art.old-2024/art/sdopt.json), which
    carries no marker of sdopt's. Only the folder sdopt marked (its writer gone) is removed."""
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60)
    for folder in (tmp_path / "art", tmp_path / ".art.old-2024" / "art", tmp_path / ".art.old-k3x9qz2a" / "art"):
        folder.mkdir(parents=True)
        (folder / "sdopt.json").write_text("{}")
    (tmp_path / ".art.old-k3x9qz2a" / ".sdopt-incomplete").write_text(  # the marker sdopt writes into its swap folder
        f"an sdopt command was replacing art and did not finish: pid {int(gone.stdout)} host {socket.gethostname()}\n")
    assert main(["clean", str(tmp_path)]) == 0
    assert f"removed {tmp_path / '.art.old-k3x9qz2a'}" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"art", ".art.old-2024"}
    assert (tmp_path / ".art.old-2024" / "art" / "sdopt.json").is_file()


def test_sdopt_clean_says_where_the_cache_is_and_what_it_holds(tmp_path, capsys, monkeypatch):
    """One sd15 generate on OpenVINO left a 3.4 GB compiled UNet in sdopt's per-user cache, which a user freeing space
    with `sdopt clean` was never told of (qa104). clean names the cache and its size, and removes nothing there."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    assert main(["clean", str(work)]) == 0
    assert "cache" not in capsys.readouterr().out  # no cache yet: nothing to say of it
    (cache / "openvino").mkdir(parents=True)
    (cache / "openvino" / "unet.blob").write_bytes(b"\0" * 3 * 2**20)
    assert main(["clean", str(work)]) == 0
    out = capsys.readouterr().out
    assert f"sdopt's cache {cache} holds 3.0 MiB" in out and "nothing to clean in" in out, out
    assert (cache / "openvino" / "unet.blob").stat().st_size == 3 * 2**20


@pytest.mark.slow
def test_exports_killed_at_random_points_leave_no_half_artifact_and_the_old_one_intact(tiny_model, tmp_path, export_forks):
    """Fault injection: SIGKILL at three random moments of an export over an existing artifact (--force)."""
    import random

    from sdopt.manifest import read_manifest

    out = tmp_path / "art"
    start, writing = time.perf_counter(), None
    first = _forked_export(export_forks, tiny_model, out)
    while first.exitcode is None:  # when does this machine start writing, and when is it done? (its errors: captured stderr)
        if writing is None and _temp_folders(tmp_path, "art"):
            writing = time.perf_counter() - start
        time.sleep(0.02)
    duration = time.perf_counter() - start
    assert first.exitcode == 0 and writing is not None, first.exitcode
    old_id = read_manifest(out).artifact_id
    # Each kill is timed from the moment this export's own temporary folder appears, not from its start:
    # from the start, a run that began writing later than the first (a busy CI machine, the other test
    # worker on the same cores) was killed before it wrote anything, and one that wrote faster after it
    # had finished (CI failed so: no kill landed). The first kill lands as writing begins; the others at
    # fixed-seed fractions of the first run's writing time, at most half of it (later runs are faster:
    # warm file cache).
    rng = random.Random(20)
    outcomes, left = [], 0
    for fraction in [0.0] + sorted(rng.uniform(0.05, 0.5) for _ in range(2)):
        earlier = set(_temp_folders(tmp_path, "art"))  # left by the kills before this one
        proc = _forked_export(export_forks, tiny_model, out)
        while proc.exitcode is None and not set(_temp_folders(tmp_path, "art")) - earlier:
            time.sleep(0.005)
        time.sleep(fraction * (duration - writing))
        proc.kill()
        proc.join(timeout=60)
        assert proc.exitcode is not None
        left += bool(set(_temp_folders(tmp_path, "art")) - earlier)
        manifest = read_manifest(out)  # the path holds an artifact: the old one, or a complete new one
        manifest.verify_files(out)
        outcomes.append("old" if manifest.artifact_id == old_id else "new")
        for temp in (p for p in tmp_path.iterdir() if p.name.startswith(".art.")):
            try:
                half = read_manifest(temp)
            except SdoptError as exc:  # refused as unfinished (its marker), or killed before the marker: empty
                assert "is an unfinished output" in str(exc) or not any(temp.iterdir()), exc
                continue
            half.verify_files(temp)  # readable only if complete (killed between the last two renames)
    assert left, "no kill landed while the export was writing: the test proved nothing"
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(out), "--force"]) == 0
    assert _temp_folders(tmp_path, "art") == []  # the next run into the same place cleaned them
    print(f"kills in a {duration:.1f} s export (writing from {writing:.1f} s): outcomes {outcomes}, {left} left a temporary folder")


# --- 8. the minor ones ----------------------------------------------------------------------------
def test_steps_have_a_documented_upper_bound(tiny_model, capsys):
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "100000", "-o", "/tmp/never.png", "-q"]) == 2
    assert "--steps 100000: must be an integer from 1 to 1000" in capsys.readouterr().err


def test_a_prompt_longer_than_the_encoder_reads_warns(tiny_pipeline):
    with pytest.warns(UserWarning, match="the text encoder reads the first 77"):
        result = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "prompt": "a red fox " * 1000}))
    assert result.warnings


def test_generates_warnings_are_printed_on_lines_of_their_own_above_the_bar(tiny_model, tmp_path, capsys, monkeypatch):
    """A warning raised while the denoising bar was open was printed after the bar's half-drawn line
    ("denoising:   0%|   | 0/2 [00:00<?, ?step/s]sdopt: warning: prompt ...")."""
    import sys
    import warnings

    # Shown as Python shows them outside pytest (which records them instead)
    monkeypatch.setattr(warnings, "showwarning", lambda m, c, f, n, file=None, line=None: sys.stderr.write(warnings.formatwarning(m, c, f, n, line)))
    assert main(["generate", str(tiny_model), "-p", "a red fox " * 40, "--steps", "2", "-o", str(tmp_path / "x.png")]) == 0
    shown = [line for line in capsys.readouterr().err.split("\n") if "sdopt: warning:" in line]
    assert shown and all(line.split("\r")[-1].startswith("sdopt: warning:") for line in shown), shown


def test_an_export_its_disk_obviously_cannot_hold_is_refused_before_the_work(tiny_model, tmp_path, capsys, monkeypatch):
    """sd15's ONNX export (4 GB) onto a 1 GiB disk worked for a minute, then failed on the full disk. Refused at once now,
    saying how much it takes and how much is free; an export the disk can hold goes on."""
    from collections import namedtuple

    import sdopt.export.onnx
    from sdopt import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))  # 1 MiB free
    traced, export_components = [], sdopt.export.onnx.export_components
    monkeypatch.setattr(sdopt.export.onnx, "export_components", lambda *a, **k: traced.append(a) or export_components(*a, **k))
    out = tmp_path / "onnx"
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"cannot write .*onnx: this onnx export takes about [\d.]+ MiB, and the disk of .* has 1.0 MiB free; "
                     "free some space, or choose an output path on another disk", err), err
    assert not traced and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**40, 0, 2**40))
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(out), "-q"]) == 0 and traced


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    assert main(["inspect", "x/onnx2"]) == 2
    err = capsys.readouterr().err
    assert "x/onnx2 does not exist" in err and "hub" not in err.split("does not exist")[0]


def test_an_interrupt_before_the_marker_is_written_leaves_no_folder(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM between making the temporary folder and writing its marker left an empty .NAME.tmp-* folder
    without the marker: not sdopt's to the next run or to `sdopt clean`, so it stayed (seen once in init-model --force)."""
    from sdopt import outputs

    def interrupted(folder, doing):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_mark_unfinished", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_output_dir(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_two_commands_finishing_into_one_path_at_once_neither_deletes_the_others_artifact(tmp_path, monkeypatch):
    """Two exports into one -o, without --force: each checked that the path was free, then both renamed into it. The
    second found the first's new artifact there, moved it aside and deleted it as if --force had been given (or, a
    moment later, failed with an OSError traceback, its finished output hidden in .NAME.tmp-*). Here the second
    finishes exactly between the first's last check and its rename: it now waits for that rename, then says the path
    was written meanwhile."""
    import threading

    from sdopt import outputs

    out, real_check, second = tmp_path / "out", outputs.check_output_dir, {}

    def other_command():
        try:
            with outputs.atomic_output_dir(out) as folder:
                (folder / "weights").write_text("b")
            second["result"] = "written"
        except SdoptError as exc:
            second["result"] = str(exc)

    def first_checks_then_the_other_finishes(path, force=False, inputs=()):
        checked = real_check(path, force, inputs)
        if threading.current_thread() is threading.main_thread() and any(tmp_path.glob(".out.tmp-*/weights")):
            monkeypatch.setattr(outputs, "check_output_dir", real_check)
            second["thread"] = threading.Thread(target=other_command)
            second["thread"].start()
            second["thread"].join(timeout=1)  # it runs to its end, or waits for this rename
        return checked

    monkeypatch.setattr(outputs, "check_output_dir", first_checks_then_the_other_finishes)
    with outputs.atomic_output_dir(out) as folder:
        (folder / "weights").write_text("a")
    second["thread"].join()
    assert (out / "weights").read_text() == "a"
    assert "was written by another command while this one worked" in second["result"]  # not "written", its artifact gone
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing hidden left beside it


def test_an_empty_output_folder_that_cannot_move_is_filled_in_place(tmp_path, monkeypatch):
    """A container's volume (a mount point) or an immutable folder cannot be renamed: an export onto it, empty, fills it
    entry by entry (it failed with a traceback after all the work, the artifact hidden in .NAME.tmp-*); onto one that
    holds files, the error says where the finished output is kept."""
    import errno

    from sdopt import outputs

    real = os.replace

    def busy(src, dst):
        if Path(src).name in ("mounted", "full"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", busy)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    with outputs.atomic_output_dir(mounted) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(b"w")
        (folder / "sdopt.json").write_text("{}")
    assert sorted(p.relative_to(mounted).as_posix() for p in mounted.rglob("*")) == [outputs.WRITTEN_LIST, "sdopt.json", "sub", "sub/weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["mounted"]  # no temporary folder left

    full = tmp_path / "full"
    with outputs.atomic_output_dir(full) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(SdoptError, match=r"cannot replace .*full: Device or resource busy .* kept in .*\.full\.tmp-"):
        with outputs.atomic_output_dir(full, force=True) as folder:
            (folder / "a").write_text("2")
    kept = next(tmp_path.glob(".full.tmp-*"))
    assert (kept / "a").read_text() == "2" and (full / "a").read_text() == "1"


@pytest.mark.parametrize("failure,says", [
    (OSError(28, "No space left on device"), "its disk is full"),  # torch.onnx, json, PIL: an OSError
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "its disk is full"),  # safetensors
    (RuntimeError("basic_ios::clear: iostream error"), "OpenVINO failed writing it (basic_ios::clear: iostream error), most likely"),
])
def test_a_full_disk_is_one_line_and_keeps_the_output_it_would_replace(tmp_path, capsys, monkeypatch, failure, says):
    """A full disk mid-export (init-model, export --to onnx/openvino, distill-decoder, init-lora, a bench's report) was a
    library's traceback: safetensors' SafetensorError, torch.onnx's OSError, OpenVINO's 'basic_ios::clear: iostream
    error'. It is one line that says so; nothing half-written is left, and a --force run keeps the output it replaces."""
    from sdopt import outputs

    out = tmp_path / "out"
    with outputs.atomic_output_dir(out) as folder:
        (folder / "a").write_text("old")
    with pytest.raises(SdoptError, match=rf"cannot write .*out: {re.escape(says)}.*what was written is removed\); free some space"):
        with outputs.atomic_output_dir(out, force=True) as folder:
            (folder / "a").write_text("new")
            raise failure
    assert (out / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]

    def full(*args, **kwargs):  # a file written outside an artifact folder
        raise OSError(28, "No space left on device")

    import sdopt.zoo.lora

    monkeypatch.setattr(sdopt.zoo.lora, "write_lora", full)
    assert main(["init-lora", str(tmp_path / "model"), str(tmp_path / "l.safetensors")]) == 2
    assert capsys.readouterr().err == ("sdopt: error: the disk is full ([Errno 28] No space left on device): free some space, or choose an "
                                       "output path on another disk\n")


@pytest.mark.parametrize("failure", [
    OSError(27, "File too large"),  # torch.onnx, json, PIL: an OSError
    RuntimeError("Error while serializing: I/O error: File too large (os error 27)"),  # safetensors
])
def test_a_file_past_the_file_size_limit_is_one_line_naming_the_limit(tmp_path, capsys, monkeypatch, failure):
    """Under ulimit -f (Python ignores SIGXFSZ: the write fails with EFBIG), init-model ended in safetensors'
    SafetensorError traceback and export --to onnx in 'OSError: [Errno 27] File too large', neither naming the limit.
    It is one line with the limit and what to do; nothing half-written is left, and a --force run keeps the output."""
    import resource

    from sdopt import outputs

    monkeypatch.setattr(resource, "getrlimit", lambda which: (8192, resource.RLIM_INFINITY) if which == resource.RLIMIT_FSIZE
                        else (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out = tmp_path / "out"
    with outputs.atomic_output_dir(out) as folder:
        (folder / "a").write_text("old")
    with pytest.raises(SdoptError, match=re.escape(f"cannot write {out}: a file would pass this process's file-size limit (8 KiB: ulimit -f) "
                                                   "(what was written is removed); raise the limit (ulimit -f unlimited)")):
        with outputs.atomic_output_dir(out, force=True) as folder:
            (folder / "a").write_text("new")
            raise failure
    assert (out / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]

    def too_large(*args, **kwargs):  # a file written outside an artifact folder
        raise failure

    import sdopt.zoo.lora

    monkeypatch.setattr(sdopt.zoo.lora, "write_lora", too_large)
    assert main(["init-lora", str(tmp_path / "model"), str(tmp_path / "l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdopt: error: ") and err.count("\n") == 1
    assert err.endswith(": a file would pass this process's file-size limit (8 KiB: ulimit -f); raise the limit (ulimit -f unlimited)\n")


def test_a_file_too_large_for_its_file_system_does_not_blame_a_limit_that_is_not_set(tmp_path, capsys, monkeypatch):
    """EFBIG where no ulimit -f is set is the file system's own largest file (FAT32 takes none of 4 GiB: an SDXL UNet on a
    USB stick). The line said "a file would pass this process's file-size limit (?: ulimit -f); raise the limit (ulimit
    -f unlimited)" to a user whose limit was unlimited already; it names the file system and says to write elsewhere."""
    import errno
    import resource

    from sdopt import outputs

    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out = tmp_path / "out"
    with pytest.raises(SdoptError) as refused:
        with outputs.atomic_output_dir(out):
            raise OSError(errno.EFBIG, "File too large")
    assert str(refused.value) == (f"cannot write {out}: a file is larger than the file system there takes (FAT32 takes none of 4 GiB "
                                  "or more) (what was written is removed); write it to a disk whose file system takes larger files "
                                  "(ext4, NTFS, exFAT)")
    assert list(tmp_path.iterdir()) == []

    def too_large(*args, **kwargs):  # a file written outside an artifact folder
        raise OSError(errno.EFBIG, "File too large")

    import sdopt.zoo.lora

    monkeypatch.setattr(sdopt.zoo.lora, "write_lora", too_large)
    assert main(["init-lora", str(tmp_path / "model"), str(tmp_path / "l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "ulimit" not in err and err.endswith(": a file is larger than the file system there takes (FAT32 takes none of 4 GiB or more); "
                                                "write it to a disk whose file system takes larger files (ext4, NTFS, exFAT)\n"), err


def test_init_model_under_ulimit_f_says_so_and_leaves_nothing(tmp_path):
    """The same for real: init-model tiny in a child limited to 64 KiB files (its UNet's safetensors is ~2 MiB)."""
    import resource
    import subprocess
    import sys

    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run([sys.executable, "-m", "sdopt.cli", "init-model", "tiny", str(tmp_path / "tiny")], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_files)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].endswith("file-size limit (64 KiB: ulimit -f) (what was written is removed); raise the limit "
                                                 "(ulimit -f unlimited)"), proc.stderr[-1000:]
    assert list(tmp_path.iterdir()) == []


def test_running_out_of_memory_is_one_line_naming_the_limit(tmp_path, capsys, monkeypatch):
    """Under ulimit -v, sdopt generate died with a bare MemoryError traceback (torch's import, a load): it is one line
    that says the process ran out of memory, the address-space limit it runs under, and what to do; exit 2."""
    import resource

    import sdopt.zoo.lora

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(sdopt.zoo.lora, "write_lora", out_of_memory)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (600 * 2**20, resource.RLIM_INFINITY))
    assert main(["init-lora", str(tmp_path / "model"), str(tmp_path / "l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdopt: error: out of memory: ") and err.count("\n") == 1
    assert "limited to 600 MiB: raise the limit, ulimit -v" in err


def test_a_thread_that_cannot_start_is_not_blamed_on_the_checkpoint(tiny_model, tmp_path, capsys, monkeypatch):
    """Under ulimit -v 1.2 GB, export --to onnx of the tiny model said "cannot load text_encoder ...: RuntimeError: can't
    start new thread; the checkpoint is damaged or incomplete ...: download or export it again": advice that cannot
    work, the folder was whole. It is now this process's memory or threads, with the limit it runs under; exit 2."""
    import resource

    import sdopt.runtime.torch

    class NoThreads:  # from_pretrained starts threads to read the weights
        load_config = None  # read as a Diffusers class

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sdopt.runtime.torch, "module_class", lambda name: NoThreads)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1200 * 2**20, resource.RLIM_INFINITY))
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err == ("sdopt: error: can't start new thread: this process could not get the memory or threads it asked for (its address "
                   "space is limited to 1,200 MiB: raise the limit, ulimit -v); close other programs, or ask for less (ulimit -u limits "
                   "threads too)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("said", [
    "Exception from src/inference/src/cpp/infer_request.cpp:224:\nException from src/plugins/intel_cpu/src/node.cpp:823:\n"
    "[CPU] Reorder node with name 'conv1' can't alloc\n",  # OpenVINO's infer under ulimit -v 2 GB
    "/venv/site-packages/safetensors/_safetensors_rust.abi3.so: failed to map segment from shared object",  # an import under 1.6 GB
])
def test_a_library_out_of_memory_is_one_line_naming_the_limit(tiny_model, tmp_path, capsys, monkeypatch, said):
    """Under ulimit -v, OpenVINO's infer raised "[CPU] Reorder node ... can't alloc" and the loader "failed to map segment":
    each a traceback (one with a MemoryError raised while Python printed it) that named no limit. One line now."""
    import resource

    import sdopt.runtime.torch

    class NoMemory:
        load_config = None

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise (ImportError if "map segment" in said else RuntimeError)(said)

    monkeypatch.setattr(sdopt.runtime.torch, "module_class", lambda name: NoMemory)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (2000 * 2**20, resource.RLIM_INFINITY))
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Exception from" not in err, err
    assert err.endswith(": this process could not get the memory or threads it asked for (its address space is limited to 2,000 MiB: "
                        "raise the limit, ulimit -v); close other programs, or ask for less (ulimit -u limits threads too)\n"), err
    assert list(tmp_path.iterdir()) == []


def test_every_test_the_guarantees_doc_names_exists():
    """docs/guarantees.md names, for each promise, the tests that hold it: in test_guarantees.py unless a file is named."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "guarantees.md").read_text()
    named = [cell for row in doc.splitlines() if row.startswith("| **") for cell in re.findall(r"`([^`]+)`", row.split("|")[-2])]
    absent, file = [], None
    for name in named:
        if "::" in name:
            file, test = name.split("::")[0] or file, name.split("::")[1]  # "::test_x": in the file named just before
        elif name.startswith("test_") and not name.endswith(".py"):
            file, test = "test_guarantees.py", name
        else:
            continue  # a whole test file, or the code that keeps the promise
        path = root / "tests" / file.removeprefix("tests/")
        test = test.rstrip("…_")  # a name cut short ("test_exports_killed_at_random_points_…")
        if not path.is_file() or not re.search(rf"^def {re.escape(test)}", path.read_text(), re.MULTILINE):
            absent.append(name)
    assert named and not absent, f"docs/guarantees.md names tests that are not where it says: {absent}"


def test_a_diffusers_folder_without_tokenizer_is_said_incomplete(model_copy, capsys):
    """Without sdopt.json nothing checked the tokenizer before loading: inspect passed it, generate said to export it again."""
    (model_copy / "sdopt.json").unlink()
    shutil.rmtree(model_copy / "tokenizer")
    assert main(["inspect", str(model_copy)]) == 2
    assert "the checkpoint is incomplete: download it again (a Diffusers folder has tokenizer/ beside unet/)" in capsys.readouterr().err
