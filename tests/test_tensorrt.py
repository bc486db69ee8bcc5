"""TensorRT without a GPU: shape profiles, the engine key and its refusals, the timing cache's place, and
the export's fail-fast checks. Building and running engines needs an NVIDIA GPU and TensorRT (scripts/gpu_check.sh)."""

import sys
import types

import pytest

from sdopt import SdoptError
from sdopt.cli import main
from sdopt.export.spec import family_specs
from sdopt.manifest import read_manifest
from sdopt.tensorrt.engines import check_engines, engine_key, timing_cache_path
from sdopt.tensorrt.profiles import parse_batch_range, parse_sizes, profiles_for, shape_profile, static_profile


@pytest.fixture(scope="module")
def tiny_facts(tiny_model):
    manifest = read_manifest(tiny_model)
    return family_specs(manifest.pipeline_family, {"text_encoder": 2}), manifest.model


def test_dynamic_profiles_double_the_guided_batch_and_span_the_sizes(tiny_facts):
    specs, model = tiny_facts
    shapes = shape_profile(parse_sizes("512x512,768x640"), parse_batch_range("1:4"))
    profiles = profiles_for(specs, model, shapes)
    unet = profiles["unet"]
    channels, seq, hidden = model["latent_channels"], model["text_max_length"], model["cross_attention_dim"]
    # min: one image without guidance; opt: one image with it (two rows); max: four images with it, the largest sides.
    assert unet["sample"].min == (1, channels, 64, 64)
    assert unet["sample"].opt == (2, channels, 64, 64)
    assert unet["sample"].max == (8, channels, 96, 80)
    assert unet["encoder_hidden_states"].to_dict() == {"min": [1, seq, hidden], "opt": [2, seq, hidden], "max": [8, seq, hidden]}
    assert unet["timestep"].min == unet["timestep"].max == ()
    assert profiles["text_encoder"]["input_ids"].max == (8, seq)  # prompts and negatives in one call
    # The VAE sees the images themselves: no doubling; the encoder takes pixels, the decoder latents.
    assert profiles["vae_decoder"]["latent_sample"].max == (4, channels, 96, 80)
    assert profiles["vae_encoder"]["sample"].opt == (1, 3, 512, 512) and profiles["vae_encoder"]["sample"].max == (4, 3, 768, 640)


def test_static_profile_is_one_guided_shape(tiny_facts):
    specs, model = tiny_facts
    profiles = profiles_for(specs, model, static_profile(512, 512, 1), static=True)
    sample = profiles["unet"]["sample"]
    assert sample.min == sample.opt == sample.max == (2, model["latent_channels"], 64, 64)
    assert profiles["vae_decoder"]["latent_sample"].max[0] == 1


def test_sdxl_unet_profile_has_its_extra_inputs(sdxl_tiny):
    manifest = read_manifest(sdxl_tiny)
    specs = family_specs(manifest.pipeline_family, {"text_encoder": 2, "text_encoder_2": 2})
    unet = profiles_for(specs, manifest.model, shape_profile([(512, 512)], (1, 2)))["unet"]
    assert unet["text_embeds"].max == (4, manifest.model["text_embeds_dim"])
    assert unet["time_ids"].min == (1, 6) and unet["time_ids"].opt == (2, 6)
    assert set(profiles_for(specs, manifest.model, static_profile(512, 512, 1), static=True)) == set(specs)


def test_a_request_outside_the_engines_profiles_is_refused_before_any_work_and_inspect_shows_them(tiny_facts, tiny_model, tiny_pipeline):
    """A dynamic TensorRT artifact's engines run only inside their profiles, but a request of another size or batch
    passed every check and failed in TensorRT mid-run; inspect showed no shapes, and a server batched past the max."""
    import copy
    import dataclasses

    from sdopt import GenerateRequest
    from sdopt.inspect_artifact import describe, format_description
    from sdopt.serve.worker import Worker

    specs, model = tiny_facts
    profiles = profiles_for(specs, model, shape_profile(parse_sizes("64x64,128x64"), parse_batch_range("1:2")))
    pipe = copy.copy(tiny_pipeline)
    pipe.manifest = dataclasses.replace(tiny_pipeline.manifest, backend="tensorrt", export={
        **tiny_pipeline.manifest.export, "profiles": {n: {i: p.to_dict() for i, p in ps.items()} for n, ps in profiles.items()}})
    pipe.check_request(GenerateRequest(prompt="a fox", height=128, width=64, num_images=2))  # inside: taken
    for asked in ({"height": 136, "width": 64}, {"height": 64, "width": 72}, {"height": 64, "width": 64, "num_images": 3}):
        with pytest.raises(SdoptError, match=r"engines take 64\.\.128 x 64 px \(height x width\), 1\.\.2 images a call.*--to tensorrt --shapes 64x64,"):
            pipe.check_request(GenerateRequest(prompt="a fox", **asked))
    described = describe(tiny_model, verify=False)
    text = format_description({**described, "export": {**described["export"], "profiles": pipe.manifest.export["profiles"]}})
    assert "shapes     engines take 64..128 x 64 px (height x width), 1..2 images a call (best at 64x64, 1 image)" in text
    assert "shapes     dynamic: 1 to 64 images a call, height and width multiples of 8 from 64 to 2048" in format_description(described)
    assert Worker(pipe, max_batch=4).max_batch == 2


def test_a_static_engines_request_without_guidance_is_refused_before_any_work(tiny_facts, tiny_pipeline):
    """Static engines are built guided (the UNet's one batch is prompts and negatives together): a request with
    guidance_scale 1 runs one half, which no profile of the engine takes, and failed inside TensorRT mid-run."""
    import copy
    import dataclasses

    from sdopt import GenerateRequest

    specs, model = tiny_facts
    profiles = profiles_for(specs, model, static_profile(64, 64, 1), static=True)
    pipe = copy.copy(tiny_pipeline)
    pipe.manifest = dataclasses.replace(tiny_pipeline.manifest, backend="tensorrt", static_shapes={"batch": 1, "height": 64, "width": 64},
                                        export={**tiny_pipeline.manifest.export,
                                                "profiles": {n: {i: p.to_dict() for i, p in ps.items()} for n, ps in profiles.items()}})
    pipe.check_request(GenerateRequest(prompt="a fox", height=64, width=64, guidance_scale=7.5))  # guided: the built shape
    with pytest.raises(SdoptError, match=r"guidance_scale=1\.0 runs the UNet without guidance.*--to tensorrt --height 64 --width 64 --batch-range 1:1$"):
        pipe.check_request(GenerateRequest(prompt="a fox", height=64, width=64, guidance_scale=1.0))


@pytest.mark.parametrize("flag, value, says", [
    ("shapes", "512by512", "HEIGHTxWIDTH"), ("shapes", "500x512", "multiple of"), ("shapes", ",", "empty"),
    ("batch_range", "4:1", "MIN:MAX"), ("batch_range", "2", "MIN:MAX"),
])
def test_bad_shape_options_are_refused(flag, value, says):
    with pytest.raises(SdoptError, match=says):
        (parse_sizes if flag == "shapes" else parse_batch_range)(value)


def test_static_with_several_sizes_is_refused():
    from sdopt.export.tensorrt import shapes_of

    with pytest.raises(SdoptError, match="one size and one batch"):
        shapes_of({"shapes": "512x512,768x768", "static": True}, 512)
    with pytest.raises(SdoptError, match="not both"):
        shapes_of({"shapes": "512x512", "height": 512, "width": 512}, 512)
    for empty, says in (("batch_range", "MIN:MAX"), ("shapes", "empty")):  # '' was taken as not given (qa67)
        with pytest.raises(SdoptError, match=says):
            shapes_of({empty: ""}, 512)
    shapes, static = shapes_of({}, 512)  # defaults: the model's own size, 1 to 4 images
    assert not static and shapes.height == (512, 512, 512) and shapes.batch == (1, 1, 4)


def test_engines_from_another_gpu_or_version_are_refused_with_the_way_out(tmp_path):
    built = engine_key("10.7.0", "9.0")
    check_engines(built, engine_key("10.7.0", "9.0"), tmp_path)  # the same: loads
    with pytest.raises(SdoptError) as err:
        check_engines(built, engine_key("10.7.0", "8.9"), tmp_path, "/models/sd15")
    assert "GPU compute capability 9.0 (this machine: 8.9)" in str(err.value)
    assert "sdopt export /models/sd15 --to tensorrt" in str(err.value) and "TensorRT 10.7" not in str(err.value)
    with pytest.raises(SdoptError, match=r"TensorRT 10.7.0 \(this machine: 10.8.0\)"):
        check_engines(built, engine_key("10.8.0", "9.0"), tmp_path)
    with pytest.raises(SdoptError, match="does not say which TensorRT"):
        check_engines(None, built, tmp_path)


def test_timing_cache_is_kept_per_version_and_gpu_in_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SDOPT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = timing_cache_path(engine_key("10.7.0", "9.0"))
    assert path == tmp_path / "xdg" / "sdopt" / "tensorrt" / "timing-trt10.7.0-sm90.cache"
    assert timing_cache_path(engine_key("10.7.0", "8.9")) != path
    monkeypatch.setenv("SDOPT_CACHE_DIR", str(tmp_path / "mine"))
    assert timing_cache_path(engine_key("10.7.0", "9.0")).parent == tmp_path / "mine" / "tensorrt"


def test_export_without_tensorrt_names_the_extra_and_writes_nothing(tiny_model, tmp_path, capsys):
    if "tensorrt" in sys.modules or _installed("tensorrt"):
        pytest.skip("TensorRT is installed here")
    out = tmp_path / "trt"
    assert main(["export", str(tiny_model), "--to", "tensorrt", "-o", str(out)]) != 0
    assert "pip install 'sdopt[tensorrt]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_without_a_gpu_says_so_before_any_work(tiny_model, tmp_path, capsys, monkeypatch):
    """TensorRT installed but no CUDA device (a fake tensorrt module stands in for the library here)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    out = tmp_path / "trt"
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--shapes", "512x512", "-o", str(out)]) != 0
    assert "TensorRT needs an NVIDIA GPU: no CUDA device here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # A bad option is refused before the GPU is even asked for.
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--shapes", "512by512", "-o", str(out)]) != 0
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_tensorrt_options_are_refused_by_other_targets(tiny_model, tmp_path, capsys):
    assert main(["export", str(tiny_model), "--to", "onnx", "--static", "-o", str(tmp_path / "x")]) != 0
    assert "--to onnx does not take --static; tensorrt does" in capsys.readouterr().err


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _trt_artifact_from(onnx_artifact, folder):
    """A TensorRT artifact as the exporter writes it, but for engines built elsewhere: the ONNX export's graphs,
    a stand-in plan per component, and the manifest fields the exporter records (profiles, engines, key)."""
    import shutil

    from sdopt.manifest import files_in, hash_components

    shutil.copytree(onnx_artifact, folder)
    manifest = read_manifest(folder)
    specs = family_specs(manifest.pipeline_family, {"text_encoder": 2})
    shapes, _ = __import__("sdopt.export.tensorrt", fromlist=["shapes_of"]).shapes_of({"shapes": "64x64", "batch_range": "1:2"}, None)
    profiles = profiles_for({n: specs[n] for n in manifest.components}, manifest.model, shapes, static=False)
    for name, entry in manifest.components.items():
        (folder / entry.folder / "model.plan").write_bytes(b"an engine for sm 8.9")
        entry.files = files_in(folder / entry.folder, folder, (".onnx", ".onnx_data", ".plan", ".json"))
    manifest.backend = "tensorrt"
    manifest.export = {"target": "tensorrt", "tensorrt": engine_key("10.7.0", "8.9"),
                       "engines": {n: {"precision": "fp16", "refittable": n == "unet", "layers": 1} for n in manifest.components},
                       "profiles": {n: {i: p.to_dict() for i, p in ps.items()} for n, ps in profiles.items()}}
    hash_components(manifest.components, folder)
    manifest.write(folder)
    return manifest


def test_rebuild_builds_the_engines_again_from_the_kept_onnx_with_the_recorded_profiles(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """`--rebuild` on another GPU: TensorRT's builder and the GPU check are stood in for (no GPU here); what is tested is
    everything around them: the recorded profiles and precision reach the builder, the new artifact's files and key, the old one untouched."""
    import sdopt.export.tensorrt as trt_export
    import sdopt.tensorrt.build as trt_build
    from sdopt.tensorrt.engines import check_engines

    old = tmp_path / "trt-sm89"
    before = _trt_artifact_from(tiny_onnx_artifact, old)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # "installed"
    calls = {}

    def stand_in_builder(onnx_path, plan_path, profiles, precision, timing_cache, refit=False, workspace_gib=None):
        assert onnx_path.is_file() and onnx_path.parent == plan_path.parent and not plan_path.exists()
        calls[onnx_path.parent.name] = (profiles, precision, refit)
        plan_path.write_bytes(b"an engine for sm 9.0")
        return {"precision": precision, "refittable": refit, "layers": 2}

    monkeypatch.setattr(trt_build, "build_engine", stand_in_builder)
    monkeypatch.setattr(trt_export, "here", lambda: engine_key("10.7.0", "9.0"))
    new = tmp_path / "trt-sm90"
    assert main(["export", str(old), "--to", "tensorrt", "--rebuild", "-o", str(new)]) == 0, capsys.readouterr().err
    rebuilt = read_manifest(new)
    rebuilt.verify_files(new)  # every file listed and hashed, the new plans among them
    assert rebuilt.export["tensorrt"] == engine_key("10.7.0", "9.0") and rebuilt.export["rebuilt_from"]["tensorrt"] == engine_key("10.7.0", "8.9")
    check_engines(rebuilt.export["tensorrt"], engine_key("10.7.0", "9.0"), new)  # loads on this machine now
    assert set(calls) == {before.components[n].folder for n in before.components}
    unet = calls[before.components["unet"].folder]
    assert unet[1] == "fp16" and unet[2] is True and unet[0]["sample"].max[0] == 4  # batch 2, guided: doubled
    assert all((new / e.folder / "model.plan").read_bytes() == b"an engine for sm 9.0" for e in before.components.values())
    read_manifest(old).verify_files(old)  # the old artifact is as it was
    assert read_manifest(old).export["tensorrt"] == engine_key("10.7.0", "8.9")
    assert any("rebuilt from the kept ONNX graphs" in n for n in rebuilt.notes)

    # What --rebuild refuses: another kind of artifact, and options it would ignore.
    assert main(["export", str(tiny_onnx_artifact), "--to", "tensorrt", "--rebuild", "-o", str(tmp_path / "x")]) == 2
    assert "is an artifact for onnxruntime: export from its checkpoint" in capsys.readouterr().err
    assert main(["export", str(old), "--to", "tensorrt", "--rebuild", "--static", "-o", str(tmp_path / "x")]) == 2
    assert "--rebuild takes the shapes, precision and options the artifact's manifest records" in capsys.readouterr().err
    assert main(["export", str(old), "--to", "onnx", "--rebuild", "-o", str(tmp_path / "x")]) == 2
    assert "does not take --rebuild" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_rebuild_without_a_gpu_says_so_and_writes_nothing(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    old = tmp_path / "trt-sm89"
    _trt_artifact_from(tiny_onnx_artifact, old)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert main(["export", str(old), "--to", "tensorrt", "--rebuild", "-o", str(tmp_path / "new")]) == 2
    assert "TensorRT needs an NVIDIA GPU: no CUDA device here" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt-sm89"]


def _stand_in_tensorrt(monkeypatch):
    """TensorRT "installed" (a module with a spec, as torch's Dynamo looks installed packages up when it is imported)."""
    import importlib.machinery

    module = types.ModuleType("tensorrt")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", module)


def _stand_in_gpu_and_builder(monkeypatch):
    """TensorRT "installed", a GPU "here" and a builder that writes a stand-in plan: what reaches the builder is recorded."""
    import sdopt.export.tensorrt as trt_export
    import sdopt.tensorrt.build as trt_build

    _stand_in_tensorrt(monkeypatch)
    monkeypatch.setattr(trt_export, "require_gpu", lambda: "a stand-in GPU")
    monkeypatch.setattr(trt_export, "here", lambda: engine_key("10.7.0", "9.0"))
    calls = {}

    def stand_in_builder(onnx_path, plan_path, profiles, precision, timing_cache, refit=False, workspace_gib=None):
        calls[onnx_path.parent.name] = precision
        plan_path.write_bytes(b"an engine")
        return {"precision": precision, "refittable": refit, "layers": 1}

    monkeypatch.setattr(trt_build, "build_engine", stand_in_builder)
    return calls


def _unet_inputs(manifest, seed=0):
    """A guided batch (2 rows) at 64x64 for the tiny UNet, as the loop gives it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"sample": rng.standard_normal((2, manifest.model["latent_channels"], 8, 8), dtype=np.float32),
            "timestep": np.array(500 - 100 * seed, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, manifest.model["text_max_length"], manifest.model["cross_attention_dim"]), dtype=np.float32)}


def _snr_db(got, reference):
    import numpy as np

    return float(10 * np.log10(np.mean(reference ** 2) / np.mean((got - reference) ** 2)))


def _fp32_unet(model):
    import torch

    from sdopt.runtime.torch import forward_of, load_module

    module = load_module(model, read_manifest(model), "unet", torch.float32)

    def run(inputs):
        with torch.inference_mode():
            return forward_of("unet", None)(module, **{k: torch.from_numpy(v) for k, v in inputs.items()})["out_sample"].numpy()

    return module, run


def _run_graph(path, inputs):
    from sdopt.runtime.onnxruntime import OrtComponent

    session = OrtComponent(path, ["CPUExecutionProvider"], device="cpu")
    try:
        return session(**inputs)["out_sample"]
    finally:
        session.close()


def test_int8_engines_are_built_from_a_unet_graph_with_calibrated_qdq(tiny_model, tmp_path, monkeypatch, capsys):
    """ModelOpt quantizes the UNet on the inputs it sees while the checkpoint generates the calibration prompts; the
    graph kept for TensorRT carries ONNX's Q/DQ pairs, and ONNX Runtime runs it here: against the fp32 UNet it is
    quantized (not identical) yet close, and against its fake-quantized module within the recorded tolerance."""
    pytest.importorskip("modelopt")
    import onnx

    from sdopt.tensorrt.quantize import TOLERANCE

    calls = _stand_in_gpu_and_builder(monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "trt"
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--precision", "int8", "--calibration-prompts", str(prompts),
                 "--static", "--height", "64", "--width", "64", "--batch-range", "1:1", "-q", "-o", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Inserted" not in printed and "int8-static via modelopt (calibrated on" in printed  # inspect's summary only
    assert "engines    TensorRT 10.7.0 on GPU compute capability 9.0: they run only there" in printed
    manifest = read_manifest(out)
    manifest.verify_files(out)
    unet = manifest.components["unet"]
    # The artifact is fp16 with its UNet in int8 (as an NNCF int8 artifact keeps its precision): so is each engine built.
    assert manifest.precision == "fp16" and unet.precision == "int8" and calls["unet"] == "int8"
    assert {n: c.precision for n, c in manifest.components.items() if n != "unet"} == {n: "fp16" for n in manifest.components if n != "unet"}
    assert all(calls[n] == "fp16" for n in manifest.components if n != "unet")
    quant = unet.quantization
    assert quant["scheme"] == "int8-static" and quant["backend"] == "modelopt" and quant["quantizers"] > 0
    assert "quantization" not in manifest.export["onnx"]  # said once, in the component's entry
    assert quant["calibration"]["prompts"] == 1 and not quant["calibration"]["builtin_prompts"]
    # Every UNet call of the calibration generation (PNDM's: each step's, and one more), each a guided batch.
    assert quant["calibration"]["samples"] == quant["calibrated_on"] >= quant["calibration"]["steps_per_prompt"]
    parity = manifest.parity["unet"]
    assert parity["passed"] and parity["tolerance"] == TOLERANCE["int8"] and parity["max_rel"] > 0

    graph = onnx.load(str(out / "unet" / "model.onnx"), load_external_data=False)
    quantize_ops = sum(n.op_type == "QuantizeLinear" and n.domain == "" for n in graph.graph.node)
    assert quantize_ops >= quant["quantizers"] // 2  # a weight's and an input's per quantized layer: both exported
    got = _run_graph(out / "unet" / "model.onnx", _unet_inputs(manifest))
    snr = _snr_db(got, _fp32_unet(tiny_model)[1](_unet_inputs(manifest)))
    assert 15 < snr < 45, snr  # quantized (fp32 rounding alone is > 100 dB away), not broken (random weights: ~26 dB)


def test_fp8_qdq_are_tensorrts_operators_and_onnxruntime_runs_their_standard_form(tiny_model, tmp_path):
    """fp8's Q/DQ export as TensorRT's own operators (trt::TRT_FP8QuantizeLinear), which ONNX Runtime lacks; the copy
    validation runs has ONNX's float8 Q/DQ in their place and agrees with the fake-quantized module and the fp32 UNet."""
    pytest.importorskip("modelopt")
    import onnx

    from sdopt.export.onnx import _trace_to_onnx
    from sdopt.export.parity import compare
    from sdopt.export.spec import trace_inputs
    from sdopt.export.tracing import torch_reference
    from sdopt.tensorrt.quantize import TOLERANCE, quantize, runnable_by_onnxruntime

    manifest = read_manifest(tiny_model)
    spec = family_specs(manifest.pipeline_family, {"text_encoder": 2})["unet"]
    module, fp32 = _fp32_unet(tiny_model)
    inputs = _unet_inputs(manifest)
    reference = fp32(inputs)
    # The second sample as a checkpoint generating in fp16 records it: the fp32 module calibrates on it all the same.
    half = {k: v.astype("float16") if v.dtype == "float32" else v for k, v in _unet_inputs(manifest, 2).items()}
    record = quantize(spec, module, [_unet_inputs(manifest, 1), half], "fp8")
    assert record["config"] == "FP8_DEFAULT_CFG" and record["quantizers"] > 0 and record["calibrated_on"] == 2
    path = tmp_path / "unet" / "model.onnx"
    path.parent.mkdir()
    _trace_to_onnx(spec, module, trace_inputs("unet", manifest.model), path, 18)
    ops = {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}
    assert ("trt", "TRT_FP8QuantizeLinear") in ops and ("", "QuantizeLinear") not in ops
    (tmp_path / "copy").mkdir()
    runnable = runnable_by_onnxruntime(path, "fp8", tmp_path / "copy")
    assert runnable != path and path.is_file()  # the kept graph is TensorRT's, untouched
    got = _run_graph(runnable, inputs)
    assert compare(torch_reference(spec, module, inputs), {"out_sample": got}, TOLERANCE["fp8"])["passed"]
    assert 10 < _snr_db(got, reference) < 45  # quantized, not broken (random weights: ~18 dB)
    assert runnable_by_onnxruntime(path, "int8", tmp_path / "copy") == path  # int8's Q/DQ are ONNX's own


def test_int8_and_fp8_refusals_come_before_any_work(tiny_model, tmp_path, monkeypatch, capsys):
    import importlib.util

    _stand_in_gpu_and_builder(monkeypatch)
    out = tmp_path / "trt"
    assert main(["export", str(tiny_model), "--to", "onnx", "--precision", "int8", "-o", str(out)]) == 2
    assert "--to onnx supports precisions fp32, fp16, not int8" in capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--precision", "fp16", "--calibration-prompts", str(prompts), "-o", str(out)]) == 2
    assert "--precision fp16 has nothing to calibrate" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelopt" else real_find_spec(name, *a))
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--precision", "fp8", "-o", str(out)]) == 2
    assert "pip install 'sdopt[modelopt]'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


def test_lora_is_fused_into_the_graphs_tensorrt_builds_from(tiny_model, tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """--lora reaches the ONNX graphs the engines are built from (the manifest says it was fused): the text encoder's
    graph no longer gives the unfused one's outputs."""
    import numpy as np

    from sdopt.runtime.onnxruntime import OrtComponent
    from sdopt.zoo.lora import write_lora

    _stand_in_gpu_and_builder(monkeypatch)
    lora = write_lora(tiny_model, tmp_path / "tiny-lora.safetensors")
    out = tmp_path / "trt"
    assert main(["export", str(tiny_model), "--to", "tensorrt", "--precision", "fp16", "--lora", f"{lora}:0.8", "--static",
                 "--height", "64", "--width", "64", "--batch-range", "1:1", "-q", "-o", str(out)]) == 0, capsys.readouterr().err
    assert read_manifest(out).export["loras"]
    ids = {"input_ids": np.arange(77, dtype=np.int64).reshape(1, 77) % 50}

    def encoded(folder):
        session = OrtComponent(folder / "text_encoder" / "model.onnx", ["CPUExecutionProvider"], device="cpu")
        try:
            return next(iter(session(**ids).values()))
        finally:
            session.close()

    assert not np.allclose(encoded(out), encoded(tiny_onnx_artifact), atol=1e-4)


@pytest.mark.parametrize("opset", [18, 21])
def test_fp8_copy_for_onnxruntime_keeps_a_later_opset(tmp_path, opset):
    """The fp8 copy ONNX Runtime runs needs opset 19's float8 Q/DQ; a graph exported at --opset 20 or 21 keeps its own
    (lowered to 19, opset 20's Gelu was refused as an invalid graph)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from sdopt.runtime.onnxruntime import OrtComponent
    from sdopt.tensorrt.quantize import runnable_by_onnxruntime

    nodes = [helper.make_node("TRT_FP8QuantizeLinear", ["x", "scale"], ["q"], domain="trt"),
             helper.make_node("TRT_FP8DequantizeLinear", ["q", "scale"], ["dq"], domain="trt"),
             helper.make_node("Gelu" if opset >= 20 else "Relu", ["dq"], ["out_sample"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, [4])],
                              [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("trt", 1)]), str(path))
    (tmp_path / "copy").mkdir()
    runnable = runnable_by_onnxruntime(path, "fp8", tmp_path / "copy")
    assert {o.domain: o.version for o in onnx.load(str(runnable)).opset_import}[""] == max(opset, 19)
    session = OrtComponent(runnable, ["CPUExecutionProvider"], device="cpu")
    try:
        got = session(x=np.array([-1.0, 0.0, 1.0, 3.0], dtype=np.float32))["out_sample"]
    finally:
        session.close()
    assert got[1] == 0 and got[3] > 2.9  # fp8 e4m3 holds 3.0/0.5 = 6 exactly


def test_int8_of_an_inpainting_checkpoint_is_refused_before_calibrating(tmp_path, monkeypatch, capsys):
    """Its 9-channel UNet takes inpainting requests only: calibration's generations from text cannot run on it (they failed
    with the runtime's "--init-image and --mask" error, options export does not take, after seconds of work)."""
    from sdopt.zoo import write_model

    _stand_in_gpu_and_builder(monkeypatch)
    model = write_model("tiny-inpaint", tmp_path / "inpaint", seed=0, progress=False)
    out = tmp_path / "trt"
    assert main(["export", str(model), "--to", "tensorrt", "--precision", "int8", "--static", "--height", "64", "--width", "64",
                 "--batch-range", "1:1", "-q", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "this is an inpainting checkpoint" in err and "--precision fp16" in err and "--init-image" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inpaint"]
