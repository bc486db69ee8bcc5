"""Prompt adherence in the bench: the judge chosen for a run's prompts, its scores in the report, the gate's floor."""

import json
import shutil

import numpy as np
import pytest

from sdopt import SdoptError
from sdopt.bench.gate import gate
from sdopt.bench.grounding import adherence, choose_judge
from sdopt.shapes.scenes import held_out_prompts, samples

from conftest import BENCH_SETTINGS, derived

SHAPES_PROMPTS = ["a red circle on the left", "a blue square on the right and a green triangle on the left"]


def test_the_judge_is_chosen_by_the_prompts():
    assert choose_judge("auto", ["a lighthouse at dawn"]) is None  # no score made up for prompts it cannot read
    assert choose_judge("auto", SHAPES_PROMPTS)[0] == "classical"
    assert choose_judge("none", SHAPES_PROMPTS) is None
    with pytest.raises(SdoptError, match="some prompts are not of the form"):
        choose_judge("classical", ["a lighthouse at dawn", *SHAPES_PROMPTS])
    with pytest.raises(SdoptError, match="unknown judge 'clip'; choose one of: auto, none, classical, openai, transformers"):
        choose_judge("clip", SHAPES_PROMPTS)


def test_the_transformers_judge_needs_its_model_folder_before_any_artifact_runs(tmp_path, monkeypatch):
    """The bench checks its settings (choose_judge) before the first worker; the judge itself loads after the last."""
    monkeypatch.delenv("SDOPT_JUDGE_MODEL", raising=False)
    with pytest.raises(SdoptError, match="SDOPT_JUDGE_MODEL is not set: set it to"):
        choose_judge("transformers", SHAPES_PROMPTS)
    monkeypatch.setenv("SDOPT_JUDGE_MODEL", str(tmp_path / "absent"))
    with pytest.raises(SdoptError, match="absent holds no config.json"):
        choose_judge("transformers", SHAPES_PROMPTS)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("SDOPT_JUDGE_MODEL", str(tmp_path))
    assert choose_judge("transformers", SHAPES_PROMPTS)[0] == "transformers"  # the model itself loads on first use


def test_adherence_scores_each_image_and_the_artifact():
    pairs = list(samples(seed=3, n=12))
    prompts = [caption for _, caption in pairs]
    shown = [{"prompt_index": i} for i in range(len(pairs))]
    result = adherence(choose_judge("auto", prompts), [image for image, _ in pairs], shown, prompts)
    assert result["judge"] == "classical" and result["images"] == 12 and result["mean"] >= 0.95
    assert all(0.0 <= s["adherence"] <= 1.0 for s in shown)
    blank = [np.full((64, 64, 3), 240, np.uint8)] * 2  # what a model that draws nothing gives
    none = adherence(choose_judge("auto", prompts), blank, [{"prompt_index": 0}, {"prompt_index": 1}], prompts)
    assert none["mean"] == 0.0 and none["min"] == 0.0


def test_a_bench_of_shapes_prompts_reports_adherence_per_image_and_artifact(bench_report, tiny_model, tmp_path):
    """The session's bench results, assembled again as if its prompts had been shapes captions."""
    from sdopt.bench.artifacts import collect
    from sdopt.bench.assemble import assemble_report
    from sdopt.bench.settings import BenchSettings

    out, report = bench_report
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    raws = {a["name"]: {**json.loads((copy / a["work_dir"] / "result.json").read_text()), "work_dir": a["work_dir"]} for a in report["artifacts"]}
    settings = BenchSettings.resolve(None, **{**BENCH_SETTINGS, "prompts": SHAPES_PROMPTS[:1]})
    again = assemble_report(collect([a["path"] for a in report["artifacts"][1:]], report["artifacts"][0]["path"]), raws, settings, copy)
    for a in again["artifacts"]:
        assert a["adherence"]["judge"] == "classical" and 0.0 <= a["adherence"]["mean"] <= 1.0
        assert all("adherence" in s for s in a["samples"])
    assert "| adherence |" in (copy / "report.md").read_text()
    assert "adherence" in (copy / "results.csv").read_text().splitlines()[0]
    assert " · adherence " in (copy / "report.html").read_text()  # the image grid labels each image


def test_a_vlm_judge_that_fails_after_the_bench_leaves_the_report_unjudged_not_lost(bench_report, tmp_path, monkeypatch, capsys):
    """The judge runs once every artifact has: its server down then must not throw the measurements away."""
    import socket

    from sdopt.bench.artifacts import collect
    from sdopt.bench.assemble import assemble_report
    from sdopt.bench.settings import BenchSettings

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SDOPT_JUDGE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("SDOPT_JUDGE_MODEL", "some-vlm")
    monkeypatch.setattr("sdopt.shapes.vlm_openai.RETRY_DELAY_S", 0.0)
    out, report = bench_report
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    raws = {a["name"]: {**json.loads((copy / a["work_dir"] / "result.json").read_text()), "work_dir": a["work_dir"]} for a in report["artifacts"]}
    settings = BenchSettings.resolve(None, **{**BENCH_SETTINGS, "prompts": SHAPES_PROMPTS[:1], "judge": "openai"})
    entries = collect([a["path"] for a in report["artifacts"][1:]], report["artifacts"][0]["path"])
    again = assemble_report(entries, raws, settings, copy)
    assert [a["name"] for a in again["artifacts"]] == [e.name for e in entries]  # every row kept
    assert all("adherence" not in a and all("adherence" not in s for s in a["samples"]) for a in again["artifacts"])
    assert any(w.startswith(f"adherence was not judged from {report['reference']} on: VLM judge at") for w in again["warnings"])
    assert "cannot connect" in capsys.readouterr().err
    assert json.loads((copy / "report.json").read_text())["warnings"] == again["warnings"]
    assert gate(again, {"adherence": ">= 0.5"}).exit_code == 2  # unjudged: cannot judge, never a pass


def test_a_judge_that_failed_after_the_bench_makes_the_command_exit_1_with_its_report(tiny_model, tmp_path, monkeypatch, capsys):
    """sdopt bench --judge openai whose server went down exited 0 while its report and stderr said adherence was not
    judged: a measurement asked for by name is missing, as an artifact not built (exit 1, the report kept)."""
    import sdopt.bench.runner as runner
    from sdopt.cli import main

    def bench_whose_judge_failed(artifacts, reference, out, settings, **options):  # what assemble_report leaves then
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("# the report\n")
        return {"artifacts": [{"name": "ref", "status": "ok"}, {"name": "int8", "status": "ok"}, {"name": "broken", "status": "failed"}]}

    monkeypatch.setattr(runner, "run_bench", bench_whose_judge_failed)
    monkeypatch.setenv("SDOPT_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SDOPT_JUDGE_MODEL", "some-vlm")
    (tmp_path / "prompts.txt").write_text(SHAPES_PROMPTS[0] + "\n")
    args = ["bench", "int8", "broken", "--reference", str(tiny_model), "--prompts", str(tmp_path / "prompts.txt")]  # read for its defaults
    assert main([*args, "--judge", "openai", "-o", str(tmp_path / "judged")]) == 1
    assert "the openai judge failed, so" in (err := capsys.readouterr().err) and "no adherence for ref, int8 (its warnings" in err
    assert main([*args, "--judge", "none", "-o", str(tmp_path / "unjudged")]) == 0  # no judge asked for: none missing


def test_the_gate_holds_an_adherence_floor_for_every_artifact_and_the_reference(bench_report):
    report = bench_report[1]
    names = [a["name"] for a in report["artifacts"]]
    good = derived(report, **{n: {"adherence": {"judge": "classical", "mean": 0.9, "min": 0.5, "images": 2}} for n in names})
    assert gate(good, {"adherence": ">= 0.8"}).exit_code == 0
    worse = derived(good, **{names[0]: {"adherence.mean": 0.6}})  # the reference itself draws badly
    result = gate(worse, {"adherence": ">= 0.8"})
    assert result.exit_code == 1 and [c.artifact for c in result.checks if c.verdict == "REGRESSION"] == [names[0]]
    assert gate(report, {"adherence": ">= 0.8"}).exit_code == 2  # no judge ran: cannot judge, never a pass


def test_the_gate_does_not_compare_adherence_from_two_judges(bench_report):
    report = bench_report[1]
    names = [a["name"] for a in report["artifacts"]]
    baseline = derived(report, **{n: {"adherence": {"judge": "classical", "mean": 0.9, "min": 0.5, "images": 2}} for n in names})
    vlm = derived(baseline, **{n: {"adherence.judge": "openai"} for n in names})
    assert gate(baseline, {"adherence": "-0.05"}, baseline=baseline).exit_code == 0
    with pytest.raises(SdoptError, match="cannot be compared on adherence: .* classical judge in the baseline and by the openai judge here"):
        gate(vlm, {"adherence": "-0.05"}, baseline=baseline)
    assert gate(vlm, {"adherence": ">= 0.8"}, baseline=baseline).exit_code == 0  # a floor needs no baseline's scale


def test_the_held_out_prompt_file_is_the_held_out_set():
    from pathlib import Path

    committed = (Path(__file__).resolve().parents[1] / "prompts" / "shapes-held-out.txt").read_text().splitlines()
    assert committed == held_out_prompts(64)
    assert choose_judge("auto", committed)[0] == "classical"
