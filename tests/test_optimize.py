"""sdopt optimize on the shapes model, quick candidate set: built, benched, the fastest above the floor kept."""

from __future__ import annotations

import json

import pytest

from sdopt.cli import main


def test_floor_verdicts():
    from sdopt.bench.optimize import Floor

    ref = {"status": "ok", "adherence": {"mean": 0.95}}
    floor = Floor(min_psnr=30, max_adherence_drop=0.05)
    assert floor.verdict({"status": "ok", "quality": {"psnr_db": 31.0}}, ref, exact=True)[0]
    assert not floor.verdict({"status": "ok", "quality": {"psnr_db": 29.0}, "adherence": {"mean": 0.99}}, ref, exact=True)[0]
    # A lever is judged by what it draws: far from fp32 in PSNR, but adherence within 0.05 of the reference's.
    assert floor.verdict({"status": "ok", "quality": {"psnr_db": 18.0}, "adherence": {"mean": 0.91}}, ref, exact=False)[0]
    holds, why = floor.verdict({"status": "ok", "quality": {"psnr_db": 40.0}, "adherence": {"mean": 0.89}}, ref, exact=False)
    assert not holds and "adherence 0.890 < 0.900" in why
    assert not Floor(min_adherence=0.93).verdict({"status": "ok", "adherence": {"mean": 0.92}}, ref, exact=False)[0]
    # Without a judge, a lever must hold the PSNR floor: --min-psnr, or its own --lever-min-psnr.
    holds, why = floor.verdict({"status": "ok", "quality": {"psnr_db": 18.0}}, {"status": "ok"}, exact=False)
    assert not holds and "PSNR 18.0 dB < 30 dB (no judge" in why
    assert Floor(lever_min_psnr=15).verdict({"status": "ok", "quality": {"psnr_db": 18.0}}, {"status": "ok"}, exact=False)[0]
    assert not Floor(lever_min_psnr=15).verdict({"status": "ok", "quality": {"psnr_db": 18.0}}, {"status": "ok"}, exact=True)[0]
    assert "did not run" in floor.verdict({"status": "failed", "error": "boom"}, ref, exact=True)[1]


def test_a_lever_exactly_the_allowed_drop_below_the_reference_holds():
    """Adherence means over 20 images: the reference's 17 right and 3 at 2/3 (17/20 + 2/20 = 0.95, computed
    0.9500000000000002), a lever's 14 right and 6 at 2/3 (0.9): exactly the 0.05 drop allowed, refused as
    "adherence 0.900 < 0.900"."""
    from sdopt.bench.optimize import Floor

    def mean(right, two_thirds):  # as sdopt.bench.grounding.adherence computes it
        scores = [1.0] * right + [2 / 3] * two_thirds
        return sum(scores) / len(scores)

    ref = {"status": "ok", "adherence": {"mean": mean(17, 3)}}
    holds, why = Floor(max_adherence_drop=0.05).verdict({"status": "ok", "adherence": {"mean": mean(14, 6)}}, ref, exact=False)
    assert holds, why
    assert not Floor(max_adherence_drop=0.05).verdict({"status": "ok", "adherence": {"mean": mean(13, 7)}}, ref, exact=False)[0]


def test_a_model_smaller_than_the_default_size_is_optimized_and_benched_at_its_own(shapes_model, tiny_model, tmp_path, monkeypatch, capsys):
    """`sdopt optimize models/shapes` (64x64 pictures) built and judged its candidates at 256x256 unless told: pictures
    the model never makes, its bf16 UNet past the export's parity check there (built none on a bf16 CPU, s55). The
    model's own size is taken where it is below the default, and said; a size given, and a larger model, as before."""
    import sys

    import sdopt.bench.optimize  # noqa: F401 (the module, for monkeypatch)
    from sdopt.bench import runner
    from sdopt.bench.settings import BenchSettings, ModelDefaults
    from sdopt.errors import SdoptError

    asked = []

    def stop(*args, **kwargs):
        asked.append(next(a for a in (*args, *kwargs.values()) if isinstance(a, BenchSettings)))
        raise SdoptError("stopped before the work")

    monkeypatch.setattr(sys.modules["sdopt.bench.optimize"], "optimize", stop)
    monkeypatch.setattr(runner, "run_bench", stop)
    assert main(["optimize", str(shapes_model), "-o", str(tmp_path / "o")]) == 2
    assert "benching at the model's own size, 64x64 (below the bench's default 256x256" in capsys.readouterr().err
    assert main(["optimize", str(shapes_model), "--height", "128", "-o", str(tmp_path / "o")]) == 2
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "-o", str(tmp_path / "b")]) == 2
    assert [(s.height, s.width) for s in asked] == [(64, 64), (128, 64), (64, 64)]
    said = []
    sd15_sized = BenchSettings.resolve(None, ModelDefaults(size=(512, 512)), said.append)
    assert (sd15_sized.height, sd15_sized.width) == (256, 256) and not said  # the sd15 runs: 256x256, as before


def test_a_model_benched_at_one_side_of_its_own_size_is_said_so():
    """--height 512 on a 64x64 model benches 512 high at its own width, 64; that was said as 'benching at the model's
    own size, 64x512 (below the bench's default 256x256', a size neither its own nor below the default."""
    from sdopt.bench.settings import BenchSettings, ModelDefaults

    said = []
    settings = BenchSettings.resolve(None, ModelDefaults(size=(64, 64)), said.append, height=512)
    assert (settings.height, settings.width) == (512, 64)
    assert said == ["benching at the model's own width, 64 (below the bench's default 256; --width to change)"]


@pytest.mark.parametrize("flag", ["--min-psnr", "--lever-min-psnr", "--min-adherence"])
def test_a_floor_that_is_not_a_number_is_refused_before_building(tmp_path, capsys, flag):
    """--min-psnr nan ran the whole optimize and called every candidate 'PSNR 45.5 dB >= nan dB' (held)."""
    assert main(["optimize", str(tmp_path / "any-model"), "-o", str(tmp_path / "out"), "--quick", flag, "nan"]) == 2
    assert f"{flag} nan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("flags,says", [(["--budget-minutes", "0"], "--budget-minutes 0: give the minutes"),
                                         (["--budget-minutes", "-1"], "--budget-minutes -1: give the minutes"),
                                         (["--distill-latents", "-5"], "--distill-latents -5: give 2 or more"),
                                         (["--distill-steps", "0"], "--distill-steps 0: give 1 or more"),
                                         (["--cpus-per-job", "0"], "go with --ray")])
def test_optimize_settings_that_cannot_run_are_refused_before_building(tmp_path, capsys, flags, says):
    """A budget of 0 or less ran every check and called each candidate 'ran out'; --distill-steps 0 and --cpus-per-job 0
    (without --ray) were dropped for the defaults without a word."""
    assert main(["optimize", str(tmp_path / "any-model"), "-o", str(tmp_path / "out"), "--quick", *flags]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_min_adherence_without_a_judge_for_the_prompts_is_refused_before_building(tiny_model, tmp_path, capsys):
    """--min-adherence 0.99 with prompts no judge reads (the bench's default ones) was dropped without a word: every lever
    was held to PSNR instead, and one chosen with no adherence measured."""
    assert main(["optimize", str(tiny_model), "-o", str(tmp_path / "out"), "--quick", "--min-adherence", "0.99"]) == 2
    assert "--min-adherence 0.99 is a floor on the shapes judge's adherence, and no judge reads these prompts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_when_no_candidate_holds_the_floor_the_verdicts_are_printed_too(tiny_model, tmp_path, monkeypatch, capsys):
    """Nothing holding the floor printed one line naming choice.json: the table of verdicts (how far each candidate was
    from the floor, what to lower it to), printed when one is chosen, was not. Built and benched here by stand-ins."""
    import sdopt.bench.optimize
    import sdopt.bench.runner
    from sdopt.bench.optimize import bench_label

    monkeypatch.setattr(sdopt.bench.optimize, "_build_here", lambda *a, **k: (
        {"openvino-fp32": str(tiny_model)}, {"openvino-fp32-cache2": "no openvino here", "openvino-fp32-cache2-guidance-half": "its source was not built"}))
    row = {"name": bench_label(str(tiny_model)), "status": "ok", "quality": {"psnr_db": 21.5}, "latency_s": {"median": 0.1},
           "latency_ratio_to_reference": 0.5}
    def bench(artifacts, reference, out, *a, **k):
        out.mkdir(parents=True)
        return {"artifacts": [{"name": "reference", "status": "ok"}, row]}

    monkeypatch.setattr(sdopt.bench.runner, "run_bench", bench)
    assert main(["optimize", str(tiny_model), "-o", str(tmp_path / "out"), "--quick", "--precision", "fp32", "-q"]) == 2
    out, err = capsys.readouterr()
    assert "no candidate holds the floor" in err and not (tmp_path / "out").exists()
    assert "PSNR 21.5 dB < 30 dB" in out and "not built: no openvino here" in out and "<- chosen" not in out


def test_when_no_candidate_ran_the_verdicts_are_printed_not_a_traceback(tiny_model, tmp_path, monkeypatch, capsys):
    """Every built candidate failing to run in the bench (a failed row, no latency) ended optimize in a ValueError from
    choice.json's "fastest_that_ran" (min of nothing), before the verdicts and "no candidate holds the floor"."""
    import json

    import sdopt.bench.optimize
    import sdopt.bench.runner
    from sdopt.bench.optimize import bench_label

    monkeypatch.setattr(sdopt.bench.optimize, "_build_here", lambda *a, **k: (
        {"openvino-fp32": str(tiny_model)}, {"openvino-fp32-cache2": "no openvino here", "openvino-fp32-cache2-guidance-half": "its source was not built"}))
    def bench(artifacts, reference, out, *a, **k):
        out.mkdir(parents=True)
        return {"artifacts": [{"name": "reference", "status": "ok"}, {"name": bench_label(str(tiny_model)), "status": "failed", "error": "boom"}]}

    monkeypatch.setattr(sdopt.bench.runner, "run_bench", bench)
    assert main(["optimize", str(tiny_model), "-o", str(tmp_path / "out"), "--quick", "--precision", "fp32", "-q"]) == 2
    out, err = capsys.readouterr()
    assert "no candidate holds the floor" in err and "openvino-fp32" in out and not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "out.work" / "bench" / "choice.json").read_text())["fastest_that_ran"] is None


def test_a_long_candidate_name_keeps_the_table_in_columns(capsys):
    """A candidate with every lever in its name (past 36 characters) pushed its row's columns right of the header's."""
    from sdopt.cli.measure import _print_candidates

    rows = [{"name": "openvino-bf16-int8-static-all-tiny-decoder-cache3-guidance-half", "exact": False, "speedup": 9.1, "psnr_db": 31.2,
             "adherence": None, "why": "holds"}, {"name": "openvino-bf16", "exact": True, "speedup": 3.0, "psnr_db": 48.0, "adherence": None, "why": "holds"}]
    _print_candidates(rows, rows[0]["name"])
    lines = capsys.readouterr().out.splitlines()
    assert len({line.index(f" {word} ") for line, word in zip(lines, ("exact", "no", "yes"))}) == 1, lines


def test_a_device_without_candidates_is_refused_leaving_no_work_folder(tiny_model, tmp_path, capsys):
    """--device cuda was refused after the work folder was made: an empty out.work stayed behind."""
    assert main(["optimize", str(tiny_model), "-o", str(tmp_path / "out"), "--quick", "--device", "cuda"]) == 2
    assert "sdopt optimize knows CPU candidates only so far; --device cuda has none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("work,says", [("out/w", "is inside the output"), ("out", "is the output"), (".", "contains the output"),
                                        ("model/w", "is inside the input")])
def test_a_work_folder_against_the_output_or_inside_the_model_is_refused_before_building(tiny_model, tmp_path, monkeypatch, capsys, work, says):
    """--work inside -o (or -o itself, or above it) built and benched every candidate, then was refused by the final
    rename ("the output ... contains the input ..."); inside the model it made a folder there and every candidate failed."""
    import shutil

    import sdopt.bench.optimize

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)  # a folder of its own: the old code made model/w
    monkeypatch.setattr(sdopt.bench.optimize, "_build_here", lambda *a, **k: pytest.fail("built before refusing --work"))
    monkeypatch.chdir(tmp_path)
    assert main(["optimize", "model", "-o", "out", "--quick", "--work", work]) == 2
    assert f"--work {work} {says}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (model / "w").exists()


@pytest.mark.parametrize("lacks_bf16, base", [(True, "fp32"), (False, "bf16")])
def test_candidates_follow_the_cpus_bf16(monkeypatch, lacks_bf16, base):
    """Forced either way, whatever this CPU has: int8 candidates are quantized from the float candidate of the CPU's precision."""
    import sdopt.hardware
    from sdopt.bench.optimize import candidates

    monkeypatch.setattr(sdopt.hardware, "cpu_lacks_bf16", lambda: lacks_bf16)
    pool = {c.name: c for c in candidates("cpu")}
    assert f"openvino-{base}" in pool and pool[f"openvino-{base}"].spec["precision"] == base
    assert pool[f"openvino-{base}-int8-static-all"].spec["from"] == f"openvino-{base}"
    assert pool[f"openvino-{base}-int8-static-all"].spec["components"] == ["unet", "text_encoder", "vae_decoder"]
    assert not pool[f"openvino-{base}-cache3"].exact and pool[f"openvino-{base}-int8-static"].exact
    assert ("onnx-fp32" in pool) == lacks_bf16  # emulated bf16 is never a candidate; ONNX fp32 only beside fp32
    if lacks_bf16:  # and ONNX Runtime's int8 from it, the UNet and the VAE decoder
        assert pool["onnx-fp32-int8-static"].spec == {"name": "onnx-fp32-int8-static", "quantize": "int8-static", "backend": "onnxruntime",
                                                      "from": "onnx-fp32", "components": ["unet", "vae_decoder"]}
    else:
        assert "onnx-fp32-int8-static" not in pool
    # Given explicitly, the precision wins over the CPU's.
    assert {c.spec.get("precision") for c in candidates("cpu", quick=True, base="fp32") if "export" in c.spec} == {"fp32"}


def test_candidates_under_a_onednn_cap_are_of_the_capped_cpu(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512-BF16/VNNI CPU: optimize --quick built bf16 OpenVINO candidates, which
    OpenVINO cannot compile under the cap ("no candidate could be built here"), and no channels-first one for the
    AVX2 int8 kernels the cap leaves. The candidates now follow the flags the cap leaves, as the libraries do."""
    import sdopt.hardware
    from sdopt.bench.optimize import candidates

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}), raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert "openvino-bf16" in {c.name for c in candidates("cpu")}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    pool = {c.name for c in candidates("cpu")}
    assert "openvino-fp32" in pool and "openvino-fp32-channels-first" in pool and not any("bf16" in name for name in pool)


@pytest.mark.parametrize("lacks_int8_dot", [True, False])
def test_calibration_images_reach_every_int8_candidate_and_nothing_else(monkeypatch, lacks_int8_dot):
    """An inpainting checkpoint's int8 candidates calibrate repainting the images given (sdopt quantize's option)."""
    import sdopt.hardware
    from sdopt.bench.optimize import candidates

    monkeypatch.setattr(sdopt.hardware, "cpu_lacks_int8_dot", lambda: lacks_int8_dot)
    pool = candidates("cpu", base="fp32", calibration_images=["/photos/a.png"])
    int8 = [c for c in pool if c.spec.get("quantize") == "int8-static"]
    assert len(int8) == (6 if lacks_int8_dot else 4)  # base fp32: ONNX Runtime's int8 among them
    assert all(c.spec["options"] == {"calibration_images": ["/photos/a.png"]} for c in int8)
    assert not any("calibration_images" in (c.spec.get("options") or {}) for c in pool if c not in int8)
    assert not any("options" in c.spec for c in candidates("cpu", base="fp32") if "quantize" in c.spec)  # none given: none passed


def test_a_model_without_an_unconditional_pass_gets_no_truncated_guidance_candidates():
    from sdopt.bench.optimize import candidates

    assert any("guidance_end" in c.spec for c in candidates("cpu", base="bf16"))
    unguided = candidates("cpu", base="bf16", guided=False)  # an LCM-distilled UNet: guidance is its input
    assert unguided and not any("guidance_end" in c.spec for c in unguided)
    assert [c.name for c in unguided] == [c.name for c in candidates("cpu", base="bf16") if "guidance_end" not in c.spec]


@pytest.mark.parametrize("lacks_int8_dot", [True, False])
def test_a_cpu_without_an_int8_dot_product_also_tries_channels_first_transformers(monkeypatch, lacks_int8_dot):
    """Forced either way: the rewrite that pays where OpenVINO's int8 linear layers are slow is tried there only."""
    import sdopt.hardware
    from sdopt.bench.optimize import candidates

    monkeypatch.setattr(sdopt.hardware, "cpu_lacks_int8_dot", lambda: lacks_int8_dot)
    pool = {c.name: c for c in candidates("cpu", base="fp32")}
    assert ("openvino-fp32-channels-first-int8-static-all" in pool) == lacks_int8_dot
    if lacks_int8_dot:
        assert pool["openvino-fp32-channels-first"].spec["options"] == {"rewrite": ["transformer_channels_first"]}
        int8 = pool["openvino-fp32-channels-first-int8-static-all"]
        assert int8.exact and int8.spec["from"] == "openvino-fp32-channels-first" and int8.spec["components"] == ["unet", "text_encoder", "vae_decoder"]
        fastest = pool["openvino-fp32-channels-first-int8-static-all-tiny-cache3"]
        assert not fastest.exact and fastest.spec["from"] == "openvino-fp32-channels-first-tiny-cache3"
        assert pool["openvino-fp32-channels-first-tiny-cache3"].spec["options"] == {"deep_cache": 3, "rewrite": ["transformer_channels_first"]}
    names = list(pool)
    assert all(pool[n].exact for n in names[: sum(c.exact for c in pool.values())])  # exact ones first
    assert not any("channels-first" in c.name for c in candidates("cpu", quick=True, base="fp32"))


def test_a_candidate_built_from_another_checkpoint_at_the_same_path_is_built_again(tiny_model, tmp_path, monkeypatch):
    """The build record names the checkpoint by its path: another model written to that folder since (tiny where shapes
    was) had its candidates, tiny decoder and bench reused, and the output was a copy of the old model. The fingerprint
    each built artifact and tiny decoder records of its checkpoint now tells them apart."""
    import sdopt.decoder.distill
    import sdopt.export.run
    from sdopt.bench.build import BUILT, build_key, build_one, tiny_decoder
    from sdopt.manifest import read_manifest

    now = read_manifest(tiny_model).source["fingerprint"]
    spec, work, said, made = {"name": "ov", "export": "openvino", "precision": "fp32", "static": True}, tmp_path / "work", [], []

    def built(folder, fingerprint):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ("distill.json" if folder.name == "tiny-decoder" else "sdopt.json")).write_text(
            json.dumps({"source": {"path": str(tiny_model), "fingerprint": fingerprint}, "settings": {"height": 64, "width": 64}}))

    monkeypatch.setattr(sdopt.export.run, "export", lambda model, target, out, **kw: (made.append(out), built(out, now)))
    monkeypatch.setattr(sdopt.decoder.distill, "distill_decoder", lambda model, out, *a, **kw: (made.append(out), built(out, now)))
    built(work / "ov", "0" * 64)  # the same entry, path and size: only the checkpoint there is another
    (work / BUILT).mkdir()
    (work / BUILT / "ov.json").write_text(json.dumps(build_key(spec, tiny_model, 64, 64, "cpu", {})))
    assert build_one(spec, tiny_model, work, 64, 64, "cpu", {}, say=said.append) == str(work / "ov") and made == [work / "ov"]
    assert any("ov is built again: it was made from another checkpoint" in s for s in said)
    build_one(spec, tiny_model, work, 64, 64, "cpu", {}, say=said.append)  # now from this one: reused
    assert made == [work / "ov"] and said[-1].startswith("   reused")
    built(work / "tiny-decoder", "0" * 64)
    tiny_decoder({"name": "ov-tiny", "vae_decoder": "distilled"}, tiny_model, work, 64, 64, progress=False)
    assert made[-1] == work / "tiny-decoder"


@pytest.mark.slow
def test_optimize_keeps_the_fastest_candidate_above_the_floor(shapes_model, tmp_path, capsys):
    pytest.importorskip("openvino")
    import sdopt
    from sdopt import GenerateRequest
    from sdopt.shapes.scenes import held_out_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(held_out_prompts(1)) + "\n")
    out, work = tmp_path / "best", tmp_path / "work"
    args = ["optimize", str(shapes_model), "-o", str(out), "--work", str(work), "--quick", "--prompts", str(prompts), "--steps", "6",
            "--height", "64", "--width", "64", "--scheduler", "euler", "--runs", "1", "--seeds", "0", "--precision", "fp32", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    choice = json.loads((out / "optimize" / "choice.json").read_text())
    assert [c["name"] for c in choice["candidates"]] == ["openvino-fp32", "openvino-fp32-cache2", "openvino-fp32-cache2-guidance-half"]
    rows = {a["name"]: a for a in json.loads((out / "optimize" / "report.json").read_text())["artifacts"]}
    assert rows["openvino-fp32-cache2+guidance-end=0.5"]["guidance_end"] == 0.5 and rows["openvino-fp32-cache2"]["guidance_end"] is None
    holding = [c for c in choice["candidates"] if c["holds"]]
    assert holding and choice["chosen"] == min(holding, key=lambda c: c["latency_s"])["name"]
    assert f"{choice['chosen']} -> " in printed and "<- chosen" in printed
    assert (out / "optimize" / "report.md").is_file() and (out / "optimize" / "report.json").is_file()
    with sdopt.load(out) as pipe:  # the chosen artifact, verified against its manifest, running as it was measured
        result = pipe.generate(GenerateRequest(prompt=held_out_prompts(1)[0], steps=2, height=64, width=64))
        assert result.images[0].size == (64, 64)
        assert result.timings.unguided_steps == (1 if choice["chosen"].endswith("guidance-half") else 0)
    # A floor nothing holds: said, and no output written; the built candidates are reused, not rebuilt,
    # and so is their bench (same candidates, same settings): only the verdicts are new.
    built = (work / "openvino-fp32" / "sdopt.json").stat().st_mtime_ns
    benched = (work / "bench" / "report.json").stat().st_mtime_ns
    assert main([*args[:3], str(tmp_path / "none"), *args[4:], "--min-psnr", "200", "--min-adherence", "1.01"]) == 2
    assert "no candidate holds the floor" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert (work / "openvino-fp32" / "sdopt.json").stat().st_mtime_ns == built
    assert (work / "bench" / "report.json").stat().st_mtime_ns == benched
    verdicts = json.loads((work / "bench" / "choice.json").read_text())["candidates"]
    assert not any(c["holds"] for c in verdicts) and "< 200 dB" in verdicts[0]["why"]
    # A bench whose timings were taken on a busy machine (here: its report edited so; the reused bench is read again):
    # the fastest by them may not be, said on stderr and in choice.json.
    report = json.loads((work / "bench" / "report.json").read_text())
    for row in report["artifacts"]:
        row["latency_s"].update(rel_mad=0.01, others_cpu_share=0.7 if row["name"] == "openvino-fp32" else 0.0)
    (work / "bench" / "report.json").write_text(json.dumps(report))
    assert main([*args[:3], str(tmp_path / "busy"), *args[4:]]) == 0
    assert "could not time openvino-fp32 (others took 70% of its CPUs) fairly" in capsys.readouterr().err
    assert json.loads((work / "bench" / "choice.json").read_text())["too_noisy"] == {"openvino-fp32": "others took 70% of its CPUs"}


def test_past_the_budget_what_work_holds_built_is_still_taken(tiny_model, tiny_onnx_artifact, tmp_path):
    """Past --budget-minutes every candidate not yet looked at was 'ran out', even one --work held built, which costs
    nothing to take (walk qa43). Now only what would need building is left out, and nothing is built."""
    import shutil
    import time
    from types import SimpleNamespace

    from sdopt.bench.optimize import _build_here

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_onnx_artifact, work / "onnx-fp32")  # built by an earlier run
    pool = [SimpleNamespace(name=name, spec={"name": name, **spec}) for name, spec in (
        ("onnx-fp32", {"export": "onnx", "precision": "fp32"}), ("openvino-fp32", {"export": "openvino", "precision": "fp32"}),
        ("torch-bf16", {"precision": "bf16"}))]
    settings = SimpleNamespace(height=64, width=64, device="cpu")
    built, not_built = _build_here(pool, tiny_model, work, settings, 1, time.monotonic() - 3600, lambda line: None, progress=False)
    assert built == {"onnx-fp32": str(work / "onnx-fp32"), "torch-bf16": f"{tiny_model}@bf16"}
    assert not_built == {"openvino-fp32": "the --budget-minutes 1 ran out before it was built"}
    assert not (work / "openvino-fp32").exists()
