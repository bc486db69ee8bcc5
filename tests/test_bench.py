"""The bench on the tiny model: one real run shared by the report and gate tests."""

import json
import re
import shutil

import numpy as np
import pytest

from sdopt import SdoptError
from sdopt.errors import command_line
from sdopt.bench.profiles import available_profiles, load_profile
from sdopt.bench.runner import run_bench
from sdopt.bench.settings import BenchSettings
from sdopt.prompts import read_prompts

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from conftest import BENCH_SETTINGS as SETTINGS  # noqa: E402


def test_report_files_and_fields(bench_report):
    out, report = bench_report
    for name in ("report.json", "results.csv", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1 and data["request"]["seeds"] == [0, 1] and data["request"]["steps"] == 2
    assert data["machine"]["cpu"]["model"] and data["machine"]["libraries"]["torch"]
    assert data["unet_flops_per_call"] > 0
    names = [a["name"] for a in data["artifacts"]]
    assert names[0] == data["reference"] == "tiny" and len(names) == 4
    for a in data["artifacts"]:
        assert a["status"] == "ok", a.get("error")
        assert a["latency_s"]["median"] > 0 and a["latency_s"]["p90"] >= a["latency_s"]["median"]
        # Other processes' share of the CPUs, from /proc/stat over the timed runs: none over a span too short to tell
        share, timed_s = a["latency_s"]["others_cpu_share"], a["latency_s"]["mean"] * a["latency_s"]["n"]
        assert (share is not None or timed_s < 0.2) and (share is None or 0 <= share <= 1), (share, timed_s)
        assert set(a["stages_s"]) == {"text_encoder", "unet_step", "vae_decoder", "unet_total", "other"}
        # What no stage accounts for, measured call by call: the loop's own time, small beside the image's.
        assert 0 <= a["stages_s"]["other"] < 0.5 * a["latency_s"]["median"]
        assert a["peak_memory_bytes"] > 0 and a["size_bytes"] > 0
        assert {"psnr_db", "ssim", "latent_cosine"} <= set(a["quality"])
        assert a["compute"]["achieved_gflops"] > 0
        # Every stage's counted FLOPs over its time; the UNet's is the table's GFLOP/s column.
        stages = a["stage_compute"]
        assert set(stages) == {"text_encoder", "unet_step", "vae_decoder"} and all(c["achieved_gflops"] > 0 for c in stages.values())
        assert stages["unet_step"]["achieved_gflops"] == pytest.approx(a["compute"]["achieved_gflops"])
    assert "Per stage, GFLOP/s achieved" in (out / "report.md").read_text()
    by = {a["name"]: a for a in data["artifacts"]}
    # Run settings as each backend reports them: the profile's [run.onnxruntime] reached ONNX Runtime's sessions.
    ort = by["tiny-onnx"]["run_settings"]
    assert {"text_encoder", "unet", "vae_decoder"} <= set(ort)
    assert ort["unet"]["graph_optimization_level"] == "ORT_ENABLE_BASIC" and ort["unet"]["inter_op_num_threads"] == 1
    assert by["tiny"]["run_settings"]["unet"]["intra_op_threads"] >= 1
    assert "graph_optimization_level=ORT_ENABLE_BASIC" in (out / "report.md").read_text()
    assert by["tiny"]["quality"]["psnr_db"] == 100.0  # the reference against itself: capped
    assert by["tiny-onnx"]["quality"]["psnr_db"] >= 40
    print("bf16 PSNR", by["tiny@bf16"]["quality"]["psnr_db"], "onnx PSNR", by["tiny-onnx"]["quality"]["psnr_db"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 + 3 * 2  # three plots, and the image grid
    # The HTML says what report.md says below its table (it had the table alone), every stage's column included.
    assert "<th>text enc (ms)</th>" in html and "<th>VAE dec (ms)</th>" in html and "Speed-up is the reference" in html
    assert "Adherence was not measured" in (out / "report.md").read_text()  # these prompts are not the shapes model's
    import pandas as pd

    assert list(pd.read_csv(out / "results.csv")["artifact"]) == names


def _broken_copy(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    return broken


@pytest.mark.slow
def test_the_mean_psnr_counts_identical_images_at_the_cap():
    """report.json's psnr_db_mean left identical images out: two identical images and two at 86 dB read a mean of
    86 dB, the worst image's value, where the capped PSNRs (100, 100, 86, 86) average 93 dB."""
    from sdopt.quality import compare, psnr_db

    cap = 100.0  # report.json's unit: "decibels (capped at 100 for identical images)"

    reference = np.zeros((64, 64, 3), np.uint8)
    near = reference.copy()
    near[0, 0, 0] = 1  # one value one level off: 10 log10(255² · 12288) = 89.0 dB
    images = [reference, reference, near, near]
    latents = [np.ones(4, np.float32)] * 4
    q = compare([reference] * 4, images, latents, latents)
    assert q["psnr_db"] == pytest.approx(psnr_db(reference, near))
    assert q["psnr_db_mean"] == pytest.approx((2 * cap + 2 * psnr_db(reference, near)) / 4)
    assert compare([reference], [reference], latents[:1], latents[:1])["psnr_db_mean"] == cap


def test_failed_artifact_is_recorded_and_the_run_goes_on(tiny_model, tmp_path):
    # A time budget no run can meet: the reference still runs one full pass of its two (both
    # seeds), skips its second warm-up (the first generate took the budget), and says so.
    settings = BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0, 1], "runs": 2, "warmup": 2, "max_seconds": 1e-6})
    report = run_bench([str(_broken_copy(tiny_model, tmp_path))], str(tiny_model), tmp_path / "out", settings, progress=False)
    failed = report["artifacts"][1]
    assert failed["status"] == "failed" and "does not match the sha256" in failed["error"]
    reference = report["artifacts"][0]
    assert reference["status"] == "ok" and reference["runs"] == 1 and reference["latency_s"]["n"] == 2
    assert reference["warmups"] == 1 and reference["first_generate_counted"] is False
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Failures" in md and "ran 1 of 2 runs after 1 of 2 warm-ups" in md


def test_an_artifact_replaced_before_its_worker_loads_it_fails_its_row(tiny_model, tmp_path, monkeypatch):
    """export --force into an artifact the bench has listed but not yet run (a bench takes minutes an artifact) renamed
    another artifact in: its row gave the old one's artifact id, size and settings to the new one's figures, and the gate
    compared those. Now the row fails, saying the artifact was replaced."""
    from sdopt.bench import runner
    from sdopt.zoo import write_model

    artifact = tmp_path / "art"
    shutil.copytree(tiny_model, artifact)
    newer = write_model("tiny", tmp_path / "newer", seed=1, progress=False)
    start = runner.WorkerStarts.run

    def replaced_first(self, entry, work, timeout):  # another command's export --force lands just before this worker
        if entry.path == artifact and newer.exists():
            artifact.rename(tmp_path / "older")
            newer.rename(artifact)
        return start(self, entry, work, timeout)

    monkeypatch.setattr(runner.WorkerStarts, "run", replaced_first)
    settings = BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0], "runs": 1, "warmup": 0})
    report = run_bench([str(artifact)], str(tiny_model), tmp_path / "out", settings, progress=False)
    row = report["artifacts"][1]
    assert row["status"] == "failed" and "was replaced by another command while the bench ran" in row["error"]
    assert report["artifacts"][0]["status"] == "ok"


def test_the_bar_follows_what_the_worker_says_and_a_timeout_says_where_it_was(tiny_model, tmp_path, monkeypatch):
    """The bar moved only when an artifact ended (12 min on one under load with nothing moving); a worker past --timeout
    failed without saying how far it got."""
    import time

    from sdopt.bench import runner
    from sdopt.bench.artifacts import collect
    from sdopt.bench.worker import say

    class Worker:  # stands in for WorkerStarts: says what a worker says, then outlasts its timeout
        def run(self, entry, work, timeout):
            for line in ("loading", "loaded in 0.1 s, warming up", "2/6 images measured"):
                say(work, line)
                time.sleep(0.15)
            return None

    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.02)
    shown = []
    [entry] = collect([], str(tiny_model))
    settings = BenchSettings.resolve(None, **SETTINGS)
    result = runner._run_worker(entry, settings, tmp_path, 9.0, Worker(), show=shown.append)
    assert shown == ["loading", "loaded in 0.1 s, warming up", "2/6 images measured"]
    assert result == {"status": "failed", "error": "did not finish within 9 s (it was at: 2/6 images measured)"}
    assert not (tmp_path / "raw" / runner.slug(entry.name) / "progress").exists()


@pytest.mark.parametrize("error, stopped", [
    ("OSError: [Errno 28] No space left on device", "a disk it writes to is full"),
    # ulimit -f: qa97 saw every row fail in turn, "File too large", where a full disk stopped the bench
    ("OSError: [Errno 27] File too large", "a file would pass this process's file-size limit (64 KiB: ulimit -f)"),
])
def test_a_bench_whose_disk_fills_stops_and_removes_what_it_wrote(tiny_model, tmp_path, monkeypatch, error, stopped):
    """A full disk failed one worker after another (each recorded failed, 1.5 min on the tiny model), left a truncated
    image in raw/, and a bench run again into the folder was refused as holding another bench's report (walk qa53)."""
    import resource

    from sdopt.bench import runner

    calls = []

    def full(entry, settings, out, *args, **kwargs):
        calls.append(entry.name)
        (out / "raw" / runner.slug(entry.name)).mkdir(parents=True)
        (out / "raw" / runner.slug(entry.name) / "p0-s0.png").write_bytes(b"\x89PNG")  # cut short
        return {"status": "failed", "error": error}

    monkeypatch.setattr(runner, "_run_worker", full)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64 * 1024, resource.RLIM_INFINITY))
    out = tmp_path / "out"
    with pytest.raises(SdoptError, match=re.escape(f"the bench stopped: {stopped} ({error}), which every artifact after it would meet; "
                                                   f"what it wrote in {out} is removed")):
        run_bench([str(tiny_model)], str(tiny_model), out, BenchSettings.resolve(None, **SETTINGS), progress=False)
    assert len(calls) == 1 and list(out.iterdir()) == []


def test_the_bar_ends_on_the_workers_last_line(tiny_model, tmp_path, monkeypatch):
    """A worker that ended between two reads of its progress left the bar on the line before its last: every bench's
    bar ended on "3/4 images measured"."""
    from sdopt.bench import runner
    from sdopt.bench.artifacts import collect
    from sdopt.bench.worker import say

    class Worker:  # says its lines faster than the bar reads them, then ends
        def run(self, entry, work, timeout):
            for line in ("loading", "3/4 images measured", "4/4 images measured"):
                say(work, line)
            return 0

    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 30.0)  # no read lands while it runs
    shown = []
    [entry] = collect([], str(tiny_model))
    runner._run_worker(entry, BenchSettings.resolve(None, **SETTINGS), tmp_path, 9.0, Worker(), show=shown.append)
    assert shown == ["4/4 images measured"]


@pytest.mark.slow
def test_a_first_generate_over_budget_is_the_measured_run_when_it_covers_the_request(tiny_model, tmp_path):
    # One prompt, one seed: the first generate is already a full pass, so it is the one measured.
    settings = BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0], "runs": 2, "warmup": 2, "max_seconds": 1e-6})
    report = run_bench([str(_broken_copy(tiny_model, tmp_path))], str(tiny_model), tmp_path / "out", settings, progress=False)
    reference = report["artifacts"][0]
    assert reference["status"] == "ok" and reference["first_generate_counted"] is True
    assert reference["runs"] == 1 and reference["warmups"] == 1 and reference["latency_s"]["n"] == 1
    assert reference["latency_s"]["median"] <= reference["first_generate_s"]  # the same generate, timed inside it
    assert "its first generate outlasted the budget and is its one measured run" in (tmp_path / "out" / "report.md").read_text()


def test_reference_from_other_weights_is_refused(tiny_model, tmp_path):
    from sdopt.zoo import write_model

    other = write_model("tiny", tmp_path / "other", seed=5, progress=False)
    settings = BenchSettings.resolve(None, **SETTINGS)
    with pytest.raises(SdoptError, match="made from other weights than the reference"):
        run_bench([str(other)], str(tiny_model), tmp_path / "out", settings, progress=False)


def test_reference_with_other_shapes_is_refused(tiny_model, tmp_path):
    wider = tmp_path / "wider"
    shutil.copytree(tiny_model, wider)
    manifest = json.loads((wider / "sdopt.json").read_text())
    manifest["model"]["cross_attention_dim"] = 768
    (wider / "sdopt.json").write_text(json.dumps(manifest))
    settings = BenchSettings.resolve(None, **SETTINGS)
    with pytest.raises(SdoptError, match="have different shapes .*cross_attention_dim: 768 vs 32"):
        run_bench([str(wider)], str(tiny_model), tmp_path / "out", settings, progress=False)


def test_unknown_profile_lists_the_known_ones():
    assert {"cpu-avx512", "cpu-generic", "cuda-h100", "cuda-l4", "cuda-rtx4090"} <= set(available_profiles())
    with pytest.raises(SdoptError, match="unknown profile 'tpu-v9'; known profiles: cpu-avx512"):
        load_profile("tpu-v9")
    with pytest.raises(SdoptError, match=r"unknown profile 'cpu-avx521' \(did you mean cpu-avx512\?\)"):
        load_profile("cpu-avx521")


def test_a_profile_path_is_read_as_a_path_whatever_the_case_of_its_suffix(tmp_path):
    """x.TOML (or a path to a missing file) was looked up as a profile's name: "unknown profile 'x.TOML'"."""
    from sdopt.bench.profiles import search_path

    text = (next(f for f in search_path() if (f / "cpu-generic.toml").is_file()) / "cpu-generic.toml").read_text()
    (tmp_path / "mine.TOML").write_text(text)
    assert load_profile(str(tmp_path / "mine.TOML")).name == "cpu-generic"
    with pytest.raises(SdoptError, match=r"profile file .*missing\.toml does not exist: give the path of a \.toml profile"):
        load_profile(str(tmp_path / "missing.toml"))
    with pytest.raises(SdoptError, match="is a folder"):
        load_profile(str(tmp_path))


def test_a_folder_named_like_a_profile_is_not_listed_as_one(tmp_path, monkeypatch):
    """profiles/x.toml a folder: "unknown profile 'x'; known profiles: ..., x" named it among the known ones."""
    (tmp_path / "x.toml").mkdir()
    monkeypatch.setenv("SDOPT_PROFILES", str(tmp_path))
    assert "x" not in available_profiles()
    with pytest.raises(SdoptError, match="unknown profile 'x'"):
        load_profile("x")


def test_every_profile_parses_with_gate_rules():
    from sdopt.bench.rules import parse_rules

    for name in available_profiles():
        profile = load_profile(name)
        assert profile.device in ("cpu", "cuda") and profile.artifacts
        assert parse_rules(profile.gate)


@pytest.mark.parametrize("body,message", [
    ('[bench]\nstep = 1\n', "[bench] has no key 'step' (did you mean 'steps'?)"),
    ('[[artifacts]]\nname = "q"\nquantise = "int8"\n', "[[artifacts]] 'q' has no key 'quantise' (did you mean 'quantize'?)"),
    ('[[artifacts]]\nquantize = "int8"\n', "[[artifacts]] entry 1 has no name"),
    ('requires_avx = ["avx512f"]\n', "the profile has no key 'requires_avx'"),
    ('[run.onnxruntime]\nintra_op_threads = 2\n', "[run.onnxruntime] has no key 'intra_op_threads' (did you mean 'intra_op_num_threads'?)"),
    ('[[artifacts]]\nname = "e"\nexport = "onnx"\noptions = { deep_cach = 2 }\n', "[[artifacts]] 'e': --to onnx does not take --deep-cach"),
    ('[[artifacts]]\nname = "q"\nquantize = "int4"\nbackend = "nncf"\noptions = { grup_size = 64 }\n', "'q': --backend nncf does not take --grup-size"),
])
def test_a_profile_key_sdopt_does_not_know_is_refused(tmp_path, body, message):
    """A typo in a profile was silently ignored: [bench] step = 1 benched 4 steps, an artifact's quantise = "int8"
    benched the checkpoint itself (and was missing from the report)."""
    path = tmp_path / "typo.toml"
    path.write_text('name = "typo"\ndevice = "cpu"\n' + body)
    with pytest.raises(SdoptError, match=re.escape(message)):
        load_profile(str(path))


@pytest.mark.parametrize("text,message", [
    ('name = "x"\ndevice = "cpu"\nartifacts = 3\n', "artifacts = 3: the wrong kind of value"),
    ('name = "x"\ndevice = "cpu"\ngate = 3\n', "gate = 3: the wrong kind of value"),
    ('name = "x"\ndevice = "cpu"\nprecisions = "fp32"\n', "precisions = 'fp32': the wrong kind of value"),
    ('name = "x"\ndevice = "cpu"\nrequires_isa = "avx512f"\n', "requires_isa = 'avx512f': the wrong kind of value"),
    ('name = 3\ndevice = "cpu"\n', "name = 3: the wrong kind of value"),
    ('name = "x"\ndevice = "tpu"\n', "device = 'tpu': a profile's device is cpu or cuda"),
    # nan passed the check and was Ray's ValueError traceback once the cluster had started; inf was asked of it
    ('name = "x"\ndevice = "cpu"\n[resources]\nnum_cpus = nan\n', "[resources] num_cpus = nan: give a count, 0 or more"),
    ('name = "x"\ndevice = "cpu"\n[resources]\nnum_gpus = inf\n', "[resources] num_gpus = inf: give a count, 0 or more"),
    ('name = "x"\ndevice = "cpu"\n[resources]\ncustom = {"k" = nan}\n', "[resources] custom.k: give a positive amount"),
    # prompts = "a fox" benched 5 one-letter prompts; seeds = 3 failed every artifact, the reference too
    ('name = "x"\ndevice = "cpu"\n[bench]\nprompts = "a fox"\n', "[bench] prompts = 'a fox': give a list"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nseeds = 3\n', "[bench] seeds = 3: give a list, such as seeds = [0, 1]"),
    # [bench] values were checked only as the bench's request, naming no file or key (steps=0, "--runs 0 / --warmup 0",
    # "give --seeds 0,1,2"); runs = 1.5 was taken, and max_seconds = "600" was a TypeError traceback
    ('name = "x"\ndevice = "cpu"\n[bench]\nsteps = 0\n', "kinds.toml: [bench] steps=0: must be an integer from 1 to 1000"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nheight = 60\n', "kinds.toml: [bench] height=60: must be a multiple of 8"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nruns = 0\n', "kinds.toml: [bench] runs = 0: give a whole number, 1 or more"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nruns = 1.5\n', "kinds.toml: [bench] runs = 1.5: give a whole number, 1 or more"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nseeds = []\n', "kinds.toml: [bench] seeds = []: give one or more"),
    ('name = "x"\ndevice = "cpu"\n[bench]\nmax_seconds = "600"\n', "kinds.toml: [bench] max_seconds = '600': give each artifact's"),
    ('name = "x"\ndevice = "cpu"\n[bench]\njudge = "clasical"\n', "kinds.toml: [bench] judge = 'clasical': give one of auto"),
    # requires_isa names outside what a report records were never found on any machine ("this machine lacks avx512vnni"
    # on the machine it has), and a [gate] rule's typo was found only by `sdopt gate`, after the whole bench
    ('name = "x"\ndevice = "cpu"\nrequires_isa = ["avx512vnni"]\n', "kinds.toml: requires_isa names 'avx512vnni' (did you mean 'avx512_vnni'?)"),
    ('name = "x"\ndevice = "cpu"\n[gate]\n"latency.medain" = "+10%"\n', "kinds.toml: [gate]: unknown gate metric 'latency.medain'"),
    ('name = "x"\ndevice = "cpu"\n[gate]\n"latency.median" = "-10%"\n', "kinds.toml: [gate]: gate rule latency.median: '-10%' would pass"),
])
def test_a_profile_value_of_the_wrong_kind_is_refused_when_read(tmp_path, text, message):
    """artifacts = 3 or gate = 3 was a TypeError traceback; name = 3 or device = "tpu" one after the whole bench had run;
    precisions = "fp32" was read as its letters."""
    path = tmp_path / "kinds.toml"
    path.write_text(text)
    with pytest.raises(SdoptError, match=re.escape(message)):
        load_profile(str(path))
    with command_line(), pytest.raises(SdoptError, match=re.escape(message)):  # as sdopt bench --profile reads it: the file's keys still
        load_profile(str(path))


@pytest.mark.parametrize("entries,message", [
    ('name = "a"\nexport = "onxx"\n', "[[artifacts]] 'a': unknown export target 'onxx'"),
    ('name = "a"\nexport = "onnx"\nprecision = "fp23"\n', "[[artifacts]] 'a': precision = 'fp23': export = 'onnx' builds fp32"),
    ('name = "a"\nquantize = "int9"\n', "[[artifacts]] 'a': unknown scheme 'int9'"),
    ('name = "a"\nquantize = "int8"\nbackend = "torchaoo"\n', "[[artifacts]] 'a': unknown quantization backend 'torchaoo'"),
    ('name = "a"\nbackend = "openvino"\nreference = true\n', "'a': backend = 'openvino': an entry without export or quantize is the "
                                                             'checkpoint, run by torch; for openvino, write export = "openvino"'),
    ('name = "a"\nreference = true\n[[artifacts]]\nname = "a"\nquantize = "int8"\n', "[[artifacts]] 'a' is listed twice"),
    ('name = "a"\nreference = true\n[[artifacts]]\nname = "b"\nreference = true\n', "'a', 'b' are each reference = true: mark one"),
    ('name = "a"\nreference = "yes"\n', "'a': reference = 'yes': write reference = true on the one entry"),
    ('name = "a"\nquantize = "int8"\nfrom = "b"\n[[artifacts]]\nname = "b"\nexport = "onnx"\n', "'a': from = 'b' names no entry listed before it"),
    ('name = "a"\nexport = "onnx"\nquantize = "int8"\n', "'a' has both export and quantize: an entry is one artifact"),
    ('name = "../a"\nexport = "onnx"\n', "[[artifacts]] name = '../a': give a name that can be a folder's"),
    ('name = "a"\nreference = true\n[[artifacts]]\nname = "b"\nfrom = "a"\nguidance_end = 2.0\n', "'b': guidance_end=2.0: must be a number in (0, 1]"),
    # Keys an entry of its kind does not read were ignored by the build: the bench then measured something else than the
    # profile said (a dynamic artifact for static = true, the checkpoint's export for from = ..., a torch.compile typo
    # found by the worker after the others had built)
    ('name = "a"\nexport = "openvino"\n[[artifacts]]\nname = "b"\nquantize = "int8"\nfrom = "a"\nstatic = true\n',
     "'b': static is not read on a quantize entry: a quantize entry keeps its source's shapes"),
    ('name = "a"\nexport = "openvino"\n[[artifacts]]\nname = "b"\nexport = "onnx"\nfrom = "a"\n', "'b': from is not read on a export entry"),
    ('name = "a"\nquantize = "int8"\nvae_decoder = "distilled"\n', "'a': vae_decoder is not read on a quantize entry"),
    ('name = "a"\nexport = "onnx"\ncomponents = ["unet"]\n', "'a': components is not read on a export entry"),
    ('name = "a"\nexport = "onnx"\ncompile = "default"\n', "'a': compile is not read on a export entry"),
    ('name = "a"\nexport = "openvino"\nstatic = "yes"\n', "'a': static = 'yes': write static = true"),
    ('name = "a"\nquantize = "int8"\ncomponents = "unet"\n', "'a': components = 'unet': give a list of component names"),
    ('name = "a"\nquantize = "int8"\ncomponents = ["unet", "vae_decode"]\n', "'a': components names 'vae_decode': choose from"),
    ('name = "a"\nreference = true\ncompile = "max-autotun"\n', "'a': compile='max-autotun': choose an inductor mode"),
    ('name = "a"\nreference = true\ncompile = "reduce-overhead"\n', "'a': compile='reduce-overhead' captures CUDA graphs"),
])
def test_a_profile_entry_naming_what_cannot_be_built_is_refused_when_read(tmp_path, entries, message):
    """A typo in an export target, scheme or backend was found only when the bench reached that entry (after building the
    others; "not built", exit 1 after the whole bench); a name given twice built the second entry over the first's folder; a
    second reference was dropped without a word; a checkpoint entry's backend = "openvino" benched the torch checkpoint."""
    path = tmp_path / "entries.toml"
    path.write_text('name = "x"\ndevice = "cpu"\n[[artifacts]]\n' + entries)
    with pytest.raises(SdoptError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        load_profile(str(path))


def test_a_profile_tiny_decoder_that_is_not_there_is_refused_before_anything_is_built(tmp_path):
    """vae_decoder = PATH naming no folder was found when its entry built, after the entries before it (an export each)."""
    from sdopt.bench.build import build_profile_artifacts

    path = tmp_path / "dec.toml"
    path.write_text('name = "x"\ndevice = "cpu"\n[[artifacts]]\nname = "ref"\nreference = true\n'
                    f'[[artifacts]]\nname = "ov"\nexport = "openvino"\n[[artifacts]]\nname = "ov-tiny"\nexport = "openvino"\n'
                    f'vae_decoder = "{tmp_path / "no-such-decoder"}"\n')
    with pytest.raises(SdoptError, match=re.escape("profile x: [[artifacts]] 'ov-tiny': vae_decoder = ") + ".*no-such-decoder: not a folder"):
        build_profile_artifacts(load_profile(str(path)), tmp_path / "model", tmp_path / "work", 64, 64, "cpu")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5])
def test_a_seed_no_request_takes_is_refused_before_any_worker(seed):
    """--seeds -1 (or a profile's seeds = [-1]) passed the bench's checks: every artifact loaded and failed on it, the
    reference first, and the bench exited 1 after the machine's probes, where bad input is 2 before any work."""
    with pytest.raises(SdoptError, match=re.escape(f"--seeds: seed={seed!r}: must be an integer from 0 to {2**63 - 1}")):
        BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0, seed]})
    with command_line(), pytest.raises(SdoptError, match=re.escape(f"--seeds: seed={seed!r}: must")):  # bench has no --seed flag
        BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0, seed]})


def test_runs_and_warmups_are_each_named_alone():
    """"--runs 0 / --warmup 1" named a --warmup that sdopt optimize, which has --runs, lacks (qa67)."""
    with pytest.raises(SdoptError, match=r"^--runs 0: give at least 1 timed run$"):
        BenchSettings.resolve(None, **{**SETTINGS, "runs": 0})
    with pytest.raises(SdoptError, match=r"^--warmup -1: give 0 or more warm-up runs$"):
        BenchSettings.resolve(None, **{**SETTINGS, "warmup": -1})


def test_empty_prompt_file_is_refused(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n# only a comment\n\n")
    with pytest.raises(SdoptError, match="has no prompts"):
        read_prompts(tmp_path / "prompts.txt")


def test_empty_seeds_and_prompts_flags_are_refused_not_taken_as_not_given(tiny_model, tmp_path, capsys):
    """--seeds "" benched the default seeds without a word (--seeds , was refused), and --prompts "" was "prompt file .
    is a folder" (qa64)."""
    from sdopt.cli import main

    for flag, says in (("--seeds=", "no seeds to run: give --seeds 0,1,2"), ("--prompts=", "prompt file '': no file named")):
        for command in (["bench", str(tiny_model), "--reference", str(tiny_model)], ["optimize", str(tiny_model), "--quick"]):
            assert main([*command, "-o", str(tmp_path / "out"), flag]) == 2
            assert says in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_device_no_backend_runs_on_is_refused_before_the_bench():
    """--device tpu: every artifact failed, then the report's matmul peak probe was a torch traceback (raw/ left alone)."""
    with pytest.raises(SdoptError, match="--device tpu: no backend runs on it; give one of .*cpu, cuda"):
        BenchSettings.resolve(None, device="tpu")


def test_profile_settings_are_overridden_by_flags():
    profile = load_profile("cpu-avx512")
    settings = BenchSettings.resolve(profile, steps=2)
    assert settings.steps == 2 and settings.height == profile.bench["height"] and settings.device == "cpu"


def test_eta_is_checked_with_the_settings_and_reaches_every_measured_request():
    """sdopt bench/optimize --eta: refused with the settings when out of range, else in each request a worker makes."""
    from types import SimpleNamespace

    from sdopt.bench.worker import _generate_all

    with pytest.raises(SdoptError, match="eta=2: must be a number from 0 to 1"):
        BenchSettings.resolve(None, **SETTINGS, eta=2)
    settings = BenchSettings.resolve(None, **{**SETTINGS, "scheduler": "ddim", "seeds": [0]}, eta=0.5)
    job = {**settings.__dict__, "steps": 2}
    seen = []
    fake = SimpleNamespace(generate=lambda request: seen.append((request.scheduler, request.eta)) or request)
    _generate_all(fake, job, {})
    assert seen == [("ddim", 0.5)]


def test_ray_refuses_local_settings_before_force_empties_the_report_folder(bench_report, tiny_model, tmp_path, capsys):
    """--ray --rounds 2 --force onto an earlier report: refused with the report left whole (it was removed first)."""
    import shutil

    from sdopt.cli import main

    folder, _ = bench_report
    kept = tmp_path / "kept"
    shutil.copytree(folder, kept)
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--rounds", "2", "--ray", "--force", "-o", str(kept)]) == 2
    assert "--rounds is for a bench on this machine" in capsys.readouterr().err
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in folder.iterdir())


def test_cli_bench_bad_input(tiny_model, tmp_path, capsys):
    from sdopt.cli import main

    (tmp_path / "empty.txt").write_text("")
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--prompts", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--profile", "nope", "-o", str(tmp_path / "o")]) == 2
    assert "unknown profile" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--seeds", "a,b", "-o", str(tmp_path / "o")]) == 2
    assert "give integers" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--rounds", "0", "-o", str(tmp_path / "o")]) == 2
    assert "--rounds 0" in capsys.readouterr().err
    # Rounds rotate the order on one machine; on Ray each artifact runs once on its node kind: refused before Ray starts.
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--rounds", "2", "--ray", "-o", str(tmp_path / "o")]) == 2
    assert "--rounds is for a bench on this machine" in capsys.readouterr().err
    for flags, message in ((["--timeout", "0"], "--timeout 0.0: give the seconds"),
                           (["--profile", "cpu-generic", "--build-from", str(tiny_model), "--work", str(tmp_path / "w"), "--only", " , "],
                            "no artifact names given")):
        args = flags if "--build-from" in flags else [str(tiny_model), "--reference", str(tiny_model), *flags]
        assert main(["bench", *args, "-o", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()  # an empty --only is refused, not read as "all"
    assert main(["bench", f"{tiny_model}@int3", "--reference", str(tiny_model), "-o", str(tmp_path / "o")]) == 2
    assert "@int3 is not a precision an artifact runs in" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "-o", str(tmp_path / "a-file" / "report")]) == 2
    assert "a-file is a file; give a folder for the report" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "-o", str(tiny_model)]) == 2
    assert "is a model or artifact folder" in capsys.readouterr().err


def test_a_folder_holding_another_bench_report_is_refused_without_force(tiny_model, tmp_path, capsys):
    """-o into an earlier bench's folder wrote over it without a word, and its raw/ results of other artifacts stayed."""
    from sdopt.bench.runner import check_report_folder, prepare_report_folder
    from sdopt.cli import main

    out = tmp_path / "out"
    (out / "raw" / "old-artifact").mkdir(parents=True)
    (out / "raw" / "old-artifact" / "job.json").write_text("{}")
    (out / "report.json").write_text(json.dumps({"schema": "sdopt.bench.report", "artifacts": []}))
    (out / "report.md").write_text("old")
    (out / "README.md").write_text("notes on this run")
    argv = ["bench", str(tiny_model), "--reference", str(tiny_model), "--steps", "1", "--height", "64", "--width", "64", "--seeds", "0",
            "--warmup", "0", "--runs", "1", "-q", "-o", str(out)]
    assert main(argv) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert "holds the report of another bench (report.json, report.md, raw/): pass --force to replace it" in err
    assert (out / "raw" / "old-artifact" / "job.json").is_file() and (out / "report.md").read_text() == "old"
    # --force: the earlier report's files and raw/ go, nothing else.
    prepare_report_folder(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]
    # A bench stopped before its report left raw/ alone: that is a bench's too.
    (out / "raw" / "tiny" / "round-1").mkdir(parents=True)
    (out / "raw" / "tiny" / "round-1" / "job.json").write_text("{}")
    with pytest.raises(SdoptError, match=r"holds the report of another bench \(raw/\)"):
        check_report_folder(out)
    assert check_report_folder(out, force=True) == out
    # Files under the bench's names that no bench wrote are never removed, --force or not.
    foreign = tmp_path / "foreign"
    (foreign / "raw").mkdir(parents=True)
    (foreign / "raw" / "data.csv").write_text("mine")
    (foreign / "report.md").write_text("my own notes")
    for force in (False, True):
        with pytest.raises(SdoptError, match="holds report.md, raw/, which sdopt bench did not write"):
            prepare_report_folder(foreign, force=force)
    assert (foreign / "raw" / "data.csv").is_file() and (foreign / "report.md").is_file()
    prepare_report_folder(tmp_path / "other-files", force=False)  # a folder with other files only is fine
    (tmp_path / "other-files" / "prompts.txt").write_text("a cat")
    assert check_report_folder(tmp_path / "other-files") == tmp_path / "other-files"


def test_a_work_folder_another_command_is_building_in_is_refused_naming_it(tiny_model, tmp_path, capsys):
    """Two `optimize` (or `bench --build-from`) with one --work (walk qa54): the loser's candidate export found the winner's
    folder ("already exists ... --force", an option optimize lacks) and was listed "not built" without a word of why, and
    a rebuild removed an artifact the other command was benching. The second is refused before building anything."""
    import subprocess
    import sys

    from sdopt.bench.build import build_profile_artifacts
    from sdopt.cli import main

    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[2:]; from pathlib import Path; from sdopt.locks import folder_lock\n"
                               "with folder_lock(Path(sys.argv[1]), 'work', '--work'): print('held', flush=True); sys.stdin.read()",
                               str(work), *sys.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    profile = tmp_path / "p.toml"
    profile.write_text('name = "p"\ndevice = "cpu"\n[[artifacts]]\nname = "ref"\nreference = true\n[[artifacts]]\nname = "onnx"\nexport = "onnx"\n')
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SdoptError, match=re.escape(f"--work {work} is in use by sdopt work pid {holder.pid} on ")):
            build_profile_artifacts(load_profile(str(profile)), tiny_model, work, 64, 64, "cpu")
        assert main(["optimize", str(tiny_model), "--work", str(work), "-o", str(tmp_path / "best"), "--quick", "--steps", "1",
                     "--height", "64", "--width", "64", "-q"]) == 2
        assert f"--work {work} is in use by sdopt work pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in work.iterdir()) == [".sdopt-work.lock"]  # nothing built beside the holder's
    finally:
        holder.communicate("")


def test_a_bench_into_a_folder_another_bench_is_writing_is_refused_naming_it(tiny_model, tmp_path, capsys):
    """Two benches with one -o (walk qa54): both wrote their workers' results into the same raw/ and exited 0, the report
    of one naming its request over the other's images; one started later with --force removed the running one's raw/.
    The second is refused before any work, naming the process that holds the folder; once it is done the folder is free."""
    import subprocess
    import sys

    from sdopt.cli import main
    from sdopt.locks import folder_lock

    out = tmp_path / "out"
    argv = ["bench", str(tiny_model), "--reference", str(tiny_model), "--steps", "1", "--height", "64", "--width", "64", "--seeds", "0",
            "--warmup", "0", "--runs", "1", "-q", "-o", str(out)]
    # Another process holding the folder, as a running bench does (its lock file, its raw/ results).
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[2:]; from pathlib import Path; from sdopt.locks import folder_lock\n"
                               "with folder_lock(Path(sys.argv[1]), 'bench', '-o'): print('held', flush=True); sys.stdin.read()",
                               str(out), *sys.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        (out / "raw" / "tiny").mkdir(parents=True)
        (out / "raw" / "tiny" / "job.json").write_text("{}")
        for force in ([], ["--force"]):
            assert main(argv + force) == 2
            assert f"-o {out} is in use by sdopt bench pid {holder.pid} on " in capsys.readouterr().err
        assert (out / "raw" / "tiny" / "job.json").is_file()  # --force removed nothing of the running bench's
        with pytest.raises(SdoptError, match=f"is in use by sdopt bench pid {holder.pid}"), folder_lock(out, "bench", "-o"):
            pass
    finally:
        holder.communicate("")
    assert sorted(p.name for p in out.iterdir()) == ["raw"]  # the lock file went with its holder
    with folder_lock(out, "bench", "-o"):
        pass


@pytest.mark.slow
def test_a_bench_whose_reference_failed_says_so_and_exits_1(tiny_model, tmp_path, capsys):
    from sdopt.cli import main

    out = tmp_path / "out"
    code = main(["bench", str(tiny_model), "--reference", str(_broken_copy(tiny_model, tmp_path)), "--steps", "2", "--height", "64",
                 "--width", "64", "--seeds", "0", "--warmup", "0", "--runs", "1", "-q", "-o", str(out)])
    assert code == 1 and "the reference broken failed, so nothing was compared" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert any(w.startswith("the reference failed (") and "sha256" in w for w in report["warnings"])


@pytest.mark.slow
def test_a_profile_is_built_from_one_checkpoint_and_benched(tiny_model, tmp_path, capsys):
    """`sdopt bench --build-from`: the profile's list built (one it cannot build named and left out,
    exit 1), benched against its reference; a second run reuses what the first built."""
    pytest.importorskip("torchao")
    from sdopt.cli import main

    profile = tmp_path / "tiny-cpu.toml"
    profile.write_text(
        'name = "tiny-cpu"\ndescription = "test"\ndevice = "cpu"\nprecisions = ["fp32", "int8"]\nbackends = ["torch"]\n'
        '[bench]\nsteps = 2\nheight = 64\nwidth = 64\nwarmup = 0\nruns = 1\nseeds = [0]\n'
        '[[artifacts]]\nname = "torch-fp32"\nreference = true\n'
        '[[artifacts]]\nname = "torch-int8"\nquantize = "int8"\nbackend = "torchao"\n'
        '[[artifacts]]\nname = "torch-nf4-torchao"\nquantize = "nf4"\nbackend = "torchao"\n'
    )
    work, args = tmp_path / "work", ["bench", "--profile", str(profile), "--build-from", str(tiny_model), "-q"]
    assert main([*args, "--work", str(work), "--guidance", "3.5", "-o", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert "not built: torch-nf4-torchao: --backend torchao --scheme nf4 on cpu is not supported" in err
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["request"]["guidance_scale"] == 3.5  # --guidance over the profile's (none) and the default 7.5
    assert [a["name"] for a in report["artifacts"]] == ["torch-fp32", "torch-int8"] and report["profile"] == "tiny-cpu"
    assert all(a["status"] == "ok" for a in report["artifacts"])
    from sdopt.bench.build import build_profile_artifacts

    built = (work / "torch-int8" / "sdopt.json").stat().st_mtime_ns
    again = build_profile_artifacts(load_profile(str(profile)), tiny_model, work, 64, 64, "cpu", only=["torch-int8"])
    assert again.others == [str(work / "torch-int8")] and again.reference == str(tiny_model) and not again.not_built
    assert (work / "torch-int8" / "sdopt.json").stat().st_mtime_ns == built  # reused, not rebuilt
    # An edited entry is built again, and said so; one built before records were kept is reused and recorded.
    profile.write_text(profile.read_text().replace('backend = "torchao"\n[[', 'backend = "torchao"\ncomponents = ["unet"]\n[[', 1))
    said = []
    build_profile_artifacts(load_profile(str(profile)), tiny_model, work, 64, 64, "cpu", only=["torch-int8"], say=said.append)
    assert (work / "torch-int8" / "sdopt.json").stat().st_mtime_ns != built and any("torch-int8 is built again: its spec changed" in s for s in said)
    assert json.loads((work / "torch-int8" / "sdopt.json").read_text())["components"]["text_encoder"].get("quantization") is None
    (work / ".built" / "torch-int8.json").unlink()
    rebuilt = (work / "torch-int8" / "sdopt.json").stat().st_mtime_ns
    build_profile_artifacts(load_profile(str(profile)), tiny_model, work, 64, 64, "cpu", only=["torch-int8"])
    assert (work / "torch-int8" / "sdopt.json").stat().st_mtime_ns == rebuilt and (work / ".built" / "torch-int8.json").is_file()
    assert main([*args, "--work", str(work), "--only", "torch-fp32, nope", "-o", str(tmp_path / "r3")]) == 2
    assert "--only nope: profile tiny-cpu lists torch-fp32, torch-int8, torch-nf4-torchao" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--build-from", str(tiny_model), "-o", str(tmp_path / "r4")]) == 2


def test_a_work_folder_inside_the_model_is_refused_before_building(tiny_model, tmp_path, capsys):
    """bench --build-from M --work M/w made M/w in the model and went on for minutes, each export it tried refused as an
    output inside the input: one line up front instead, and the model left as it was."""
    from sdopt.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)  # a folder of its own: the old code made model/w
    assert main(["bench", "--profile", "cpu-shapes", "--build-from", str(model), "--work", str(model / "w"), "-o", str(tmp_path / "r")]) == 2
    assert f"--work {model / 'w'} is inside the input {model}: choose a work folder outside the input" in capsys.readouterr().err
    assert not (model / "w").exists() and not (tmp_path / "r").exists()


def test_merged_rounds_join_samples_and_a_failed_round_fails_the_artifact():
    from sdopt.bench.rounds import merge_rounds

    def round_result(scale, peak):
        return {"status": "ok", "load_s": 10.0 * scale, "first_generate_s": 5.0 * scale, "runs": 2, "warmups": 1,
                "latency_samples_s": [1.0 * scale, 1.1 * scale], "text_encoder_samples_s": [0.1, 0.1], "unet_step_samples_s": [0.2] * 4,
                "vae_decoder_samples_s": [0.3, 0.3], "unet_total_samples_s": [0.4 * scale, 0.5 * scale], "unet_total_median_s": 0.45 * scale,
                "peak_memory_bytes": peak, "process_peak_rss_bytes": peak + 1, "samples": [{"image": f"x{scale}.png"}]}

    first, second = round_result(1, 100), round_result(2, 50)
    merged = merge_rounds([first, second])
    assert merged["latency_samples_s"] == [1.0, 1.1, 2.0, 2.2] and merged["unet_step_samples_s"] == [0.2] * 8
    assert merged["runs"] == 4 and merged["warmups"] == 2 and merged["rounds"] == 2
    assert merged["load_s"] == 10.0 and merged["first_generate_s"] == 5.0 and merged["load_s_by_round"] == [10.0, 20.0]
    assert merged["peak_memory_bytes"] == 100 and merged["process_peak_rss_bytes"] == 101
    assert merged["unet_total_median_s"] == pytest.approx(0.65)  # the median of the four samples, not the mean of the two medians (0.675)
    assert merged["samples"] == [{"image": "x2.png"}]  # the last round's images
    assert merge_rounds([first]) is first
    failed = merge_rounds([first, {"status": "failed", "error": "boom"}])
    assert failed["status"] == "failed" and failed["error"] == "round 2 of 2: boom"


@pytest.mark.slow
def test_rounds_rotate_the_order_join_every_rounds_samples_and_skip_what_failed(tiny_model, tiny_onnx_artifact, tmp_path):
    settings = BenchSettings.resolve(None, **{**SETTINGS, "seeds": [0], "runs": 1, "rounds": 2})
    out = tmp_path / "out"
    broken = _broken_copy(tiny_model, tmp_path)
    report = run_bench([str(tiny_onnx_artifact), str(broken)], str(tiny_model), out, settings, progress=False)
    reference, onnx, failed = report["artifacts"]
    for row in (reference, onnx):
        assert row["status"] == "ok" and row["rounds"] == 2 and row["runs"] == 2 and row["latency_s"]["n"] == 2
    assert failed["status"] == "failed" and not (out / "raw" / failed["name"] / "round-2").exists()  # not tried again
    assert report["settings"]["rounds"] == 2
    assert "in each of 2 rounds" in (out / "report.md").read_text()

    def finished(row, r):
        return (out / "raw" / row["name"] / f"round-{r}" / "result.json").stat().st_mtime

    # Round 1 in the given order, round 2 rotated by one: the ONNX artifact first, the reference last.
    assert finished(reference, 1) < finished(onnx, 1) < finished(onnx, 2) < finished(reference, 2)
    assert onnx["work_dir"].endswith("round-2")  # images and latents: the last round's, compared with the reference's


@pytest.mark.slow
def test_a_terminated_bench_reports_what_finished_kills_its_worker_and_writes_its_report_through_a_second_interrupt(tiny_model, tmp_path):
    """What `timeout 300 sdopt bench ...` does at its limit: SIGTERM while the second artifact's worker runs; then, the
    moment the bench says it is writing the partial report, Ctrl-C to the whole process group (a terminal's, or a CI
    runner's after its own SIGTERM). The second interrupt left raw/ alone, or a report without report.html: it now
    waits for the report. (One test for both: each starts a bench, ~13 s.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdopt.cli", "bench", f"{tiny_model}@bf16", "--reference", str(tiny_model), "--steps", "2",
           "--height", "64", "--width", "64", "--seeds", "0", "--warmup", "0", "--runs", "100000", "--max-seconds", "2", "-q", "-o", str(out)]
    # Every process the bench starts inherits this tag (a forked worker has its fork server's command
    # line, not the worker's), so any that outlives the bench is found in /proc/*/environ.
    value = f"{tmp_path.name}-{os.getpid()}"
    tag = f"SDOPT_TEST_TAG={value}".encode()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "SDOPT_TEST_TAG": value})
    second = out / "raw" / f"{tiny_model.name}@bf16" / "job.json"

    def measuring() -> bool:  # the worker's progress line (bench/worker.py's say), gone once it ends
        try:
            return "images measured" in (second.parent / "progress").read_text()
        except OSError:
            return False

    # Polled until the second worker measures (for --max-seconds from then on): a fixed second after its job.json
    # needed a 3 s budget (the reference's too) to be sure it still ran, on a machine whose fork and load are slow.
    deadline = time.monotonic() + 240
    while not measuring() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    assert len(_tagged_processes(tag)) >= 3  # the check below sees them: the bench, its fork server, the worker
    proc.send_signal(signal.SIGTERM)
    said = []
    for line in proc.stderr:  # the first interrupt is being handled: interrupt again the moment it says so
        said.append(line)
        if "writing their report to" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(said) + rest
    assert proc.returncode == 130, stderr  # the report is written, and the run says it was not completed
    assert "interrupted: 1 of 2 artifacts finished" in stderr and "still writing the partial report" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["raw", "report.html", "report.json", "report.md", "results.csv"]
    report = json.loads((out / "report.json").read_text())
    reference, cut = report["artifacts"]
    assert reference["status"] == "ok" and reference["latency_s"]["n"] >= 1
    assert cut["status"] == "failed" and cut["error"] == "killed: the bench was interrupted while this artifact ran"
    assert any("interrupted" in w for w in report["warnings"])
    assert "interrupted" in (out / "report.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # Written quickly (a CI runner's grace before SIGKILL is seconds): no FLOP counting, no matmul peak probes.
    assert report["matmul_peak_gflops"] == {} and any("FLOP counts and matmul peaks were not measured" in w for w in report["warnings"])
    assert json.loads(second.read_text())["path"]
    deadline = time.monotonic() + 1  # a killed process leaves /proc once reaped: within the second it was given
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _tagged_processes(tag), "a worker or fork server outlived the bench"


def test_a_bench_interrupted_during_its_reference_leaves_nothing_that_refuses_the_same_command_again(tiny_model, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the reference (the first worker) ran said "no report written" but left raw/REFERENCE/job.json,
    progress and worker.log, which the same command run again was refused over as another bench's report (--force
    asked for). Its worker is stood in for here: it writes what a real one does first, then is interrupted."""
    import sdopt.bench.runner as runner
    from sdopt.cli import main

    def interrupted_worker(entry, settings, out, *args):
        (out / "raw" / entry.name).mkdir(parents=True)
        (out / "raw" / entry.name / "job.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_worker", interrupted_worker)
    out = tmp_path / "out"
    argv = ["bench", str(tiny_model), "--reference", str(tiny_model), "--steps", "1", "--height", "64", "--width", "64",
            "--seeds", "0", "--warmup", "0", "--runs", "1", "-q", "-o", str(out)]
    assert main(argv) == 130
    assert "interrupted before the reference" in capsys.readouterr().err
    assert not (out / "raw").exists()
    assert runner.check_report_folder(out) == out  # the same command, again, is not refused


def test_interrupts_are_deferred_for_a_bounded_time(capfd):
    """What the partial report is written under: an interrupt is said and ignored within the grace, and interrupts after it."""
    import os
    import signal

    from sdopt.bench.runner import interrupts_deferred

    before = signal.getsignal(signal.SIGINT)
    with interrupts_deferred(60, "still writing"):
        os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread at the next bytecode
        for _ in range(1000):
            pass
    assert "still writing; interrupt again after" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred(0, "still writing"):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100000):
                pass
    assert signal.getsignal(signal.SIGINT) is before


def _tagged_processes(tag: bytes) -> list[int]:
    from pathlib import Path

    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone, or another user's
            pass
    return found


def test_only_sets_the_order_the_reference_first(tiny_model, tmp_path):
    # Under a time limit the order decides what a cut bench still reports (scripts/gpu_check.sh).
    from sdopt.bench.build import build_profile_artifacts

    profile = tmp_path / "order.toml"
    profile.write_text(
        'name = "order"\ndescription = "test"\ndevice = "cpu"\nprecisions = ["fp32", "bf16"]\nbackends = ["torch"]\n'
        '[[artifacts]]\nname = "a-bf16"\nbackend = "torch"\nprecision = "bf16"\n'
        '[[artifacts]]\nname = "ref"\nreference = true\n'
        '[[artifacts]]\nname = "b-eager"\nbackend = "torch"\nprecision = "fp32"\ncompile = "eager"\n'
    )
    built = build_profile_artifacts(load_profile(str(profile)), tiny_model, tmp_path / "w", 64, 64, "cpu", only=["b-eager", "a-bf16"])
    assert built.reference == str(tiny_model)
    assert built.others == [f"{tiny_model}+compile=eager", f"{tiny_model}@bf16"]
    backwards = build_profile_artifacts(load_profile(str(profile)), tiny_model, tmp_path / "w", 64, 64, "cpu", only=["a-bf16", "b-eager"])
    assert backwards.others == built.others[::-1]
    # The rows take the profile's names, the reference's too: not the checkpoint's folder ("tiny"), which differs between
    # machines and made sdopt gate call two runs' reports incomparable ("reference differs").
    from sdopt.bench.artifacts import collect

    assert built.names == {str(tiny_model): "ref", f"{tiny_model}+compile=eager": "b-eager", f"{tiny_model}@bf16": "a-bf16"}
    entries = collect(built.others, built.reference, built.names)
    assert [e.name for e in entries] == ["ref", "b-eager", "a-bf16"] and entries[1].options == {"compile": "eager"}
    assert [e.name for e in collect(built.others, built.reference)] == ["tiny", "tiny+compile=eager", "tiny@bf16"]  # named by folder without them


def test_only_builds_what_its_artifacts_are_made_from_without_benching_it(tiny_model, tmp_path):
    # --only NAME where NAME is made from another entry (from = ...): that one was "not built" and NAME with it.
    from sdopt.bench.build import build_profile_artifacts

    profile = tmp_path / "chain.toml"
    profile.write_text(
        'name = "chain"\ndescription = "test"\ndevice = "cpu"\nprecisions = ["fp32"]\nbackends = ["torch", "openvino"]\n'
        '[[artifacts]]\nname = "ref"\nreference = true\n'
        '[[artifacts]]\nname = "ov"\nexport = "openvino"\nprecision = "fp32"\n'
        '[[artifacts]]\nname = "ov-half"\nfrom = "ov"\nguidance_end = 0.5\n'
    )
    said: list[str] = []
    built = build_profile_artifacts(load_profile(str(profile)), tiny_model, tmp_path / "w", 64, 64, "cpu", only=["ov-half"], say=said.append)
    assert built.not_built == {} and len(built.others) == 1 and built.others[0].endswith("ov+guidance-end=0.5")
    assert "== ov" in said and (tmp_path / "w" / "ov" / "sdopt.json").is_file()  # built first, not benched
    # Asked in an order against what they are made from: built in theirs, benched in the order asked.
    both = build_profile_artifacts(load_profile(str(profile)), tiny_model, tmp_path / "w", 64, 64, "cpu", only=["ov-half", "ov"])
    assert both.not_built == {} and [p.rsplit("/", 1)[-1] for p in both.others] == ["ov+guidance-end=0.5", "ov"]


def test_a_quantized_profile_entry_with_a_precision_runs_in_it(tmp_path):
    # torchao's quantized weights take fp16/bf16 activations: the entry benches as PATH@precision (built or reused).
    from sdopt.bench.build import build_one

    (tmp_path / "torch-int8-fp16").mkdir()
    (tmp_path / "torch-int8-fp16" / "sdopt.json").write_text("{}")  # already built: reused as it is
    spec = {"name": "torch-int8-fp16", "quantize": "int8", "backend": "torchao", "precision": "fp16"}
    assert build_one(spec, tmp_path / "model", tmp_path, 64, 64, "cuda", {}) == f"{tmp_path / 'torch-int8-fp16'}@fp16"
    spec = {"name": "torch-int8-fp16", "quantize": "int8", "backend": "torchao"}
    assert build_one(spec, tmp_path / "model", tmp_path, 64, 64, "cuda", {}) == str(tmp_path / "torch-int8-fp16")


def test_a_build_past_the_exports_parity_check_is_told_what_applies_to_it_not_the_export_flag(tmp_path, monkeypatch):
    """A profile's or sdopt optimize's build had "Pass --skip-validation", a flag neither takes: `sdopt optimize
    models/shapes --quick` on a bf16 CPU (README's example, at the default 256x256) built no candidate and said so."""
    import sdopt.export.run as export_run
    from sdopt.bench.build import build_one
    from sdopt.bench.build import OPTIMIZE_PARITY_ADVICE
    from sdopt.export.parity import ParityFailure

    def failing(*args, **kwargs):
        raise ParityFailure("unet: the exported graph differs from PyTorch by 0.171 relative to the output's largest value, "
                            "over the bf16 tolerance 0.1")

    monkeypatch.setattr(export_run, "export", failing)
    spec = {"name": "ov", "export": "openvino", "precision": "bf16", "static": True}
    with pytest.raises(SdoptError) as profile:
        build_one(spec, tmp_path / "model", tmp_path, 256, 256, "cpu", {})
    with pytest.raises(SdoptError) as optimize:
        build_one(spec, tmp_path / "model", tmp_path, 256, 256, "cpu", {}, parity_advice=OPTIMIZE_PARITY_ADVICE)
    for told, advice in ((profile, "set options = { skip_validation = true } in its [[artifacts]] entry"), (optimize, "--precision fp32")):
        assert "by 0.171" in str(told.value) and advice in str(told.value) and "Pass --skip-validation" not in str(told.value)


def test_a_tiny_decoder_distilled_with_other_settings_is_distilled_again(tmp_path, monkeypatch):
    """WORK/tiny-decoder is shared by the entries that ask for it: reused while its distill.json has the asked settings."""
    import sdopt.decoder.distill
    from sdopt.bench.build import tiny_decoder

    runs = []

    def fake_distill(model, out, settings, progress=True):
        runs.append(settings.train_steps)
        out.mkdir(parents=True)
        (out / "distill.json").write_text(json.dumps({"settings": {"height": settings.height, "width": settings.width,
                                                                   "train_steps": settings.train_steps}}))
        return out

    monkeypatch.setattr(sdopt.decoder.distill, "distill_decoder", fake_distill)
    spec = {"name": "x", "vae_decoder": "distilled", "distill": {"train_steps": 4}}
    for train_steps in (4, 4, 8):
        tiny_decoder({**spec, "distill": {"train_steps": train_steps}}, tmp_path / "model", tmp_path, 64, 64)
    tiny_decoder(spec, tmp_path / "model", tmp_path, 64, 96)  # another size
    assert runs == [4, 8, 4]
    with pytest.raises(SdoptError, match="x: distill has no key .nonsense."):
        tiny_decoder({**spec, "distill": {"nonsense": 1}}, tmp_path / "model", tmp_path, 64, 96)
    assert (tmp_path / "tiny-decoder" / "distill.json").is_file()  # a typo in the table removes nothing


def test_a_noisy_row_is_warned_about_and_quantized_weights_are_named():
    from sdopt.bench.assemble import BUSY_OTHERS_SHARE, NOISY_REL_MAD, _noisy
    from sdopt.bench.report import precision_label, quantization_label

    rows = [{"name": "quiet", "status": "ok", "latency_s": {"rel_mad": 0.03, "others_cpu_share": 0.02}},
            {"name": "jumpy", "status": "ok", "latency_s": {"rel_mad": NOISY_REL_MAD + 0.7}},
            # every sample alike and slow: only the share of the CPUs other processes took says so
            {"name": "crowded", "status": "ok", "latency_s": {"rel_mad": 0.01, "others_cpu_share": BUSY_OTHERS_SHARE + 0.36}},
            {"name": "unknown", "status": "ok", "latency_s": {"rel_mad": 0.01, "others_cpu_share": None}},  # not Linux
            {"name": "failed", "status": "failed"}]
    [warning] = _noisy(rows)
    assert warning.startswith("timings too noisy to compare: jumpy (spread 90%), crowded (others took 61% of its CPUs) (a spread")
    assert _noisy(rows[:1]) == [] and _noisy(rows[3:]) == []
    assert warning.endswith("or with --rounds K") and _noisy(rows, rounds=2)[0].endswith("or with more rounds than 2")
    torchao = {"precision": "fp32", "quantization": {"unet": {"scheme": "int8", "backend": "torchao"}, "text_encoder": {"scheme": "int8", "backend": "torchao"}}}
    assert precision_label({**torchao, "quantization": quantization_label(torchao)}) == "fp32, int8 (torchao) weights"
    static = {"precision": "bf16", "quantization": {"unet": {"scheme": "int8-static", "backend": "nncf"}}}
    assert quantization_label(static) == "int8-static (nncf) weights and activations"
    assert precision_label({"precision": "fp32", "quantization": None}) == "fp32"


def test_the_pareto_plot_rings_a_front_of_one_point_and_keeps_every_label_inside():
    """A front of one artifact drew a dashed line of one point (nothing to see, but in the legend); the slowest
    artifact's label ran past the axes and was cut."""
    from sdopt.bench.html import pareto_figure

    def row(name, latency, psnr):
        return {"artifact": name, "latency_median_s": latency, "psnr_db": psnr}

    fig = pareto_figure([row("reference", 1.0, 100.0), row("a-much-slower-artifact-name", 300.0, 40.0)])
    ax = fig.axes[0]
    [handle] = ax.get_legend().legend_handles
    assert handle.get_marker() == "o" and handle.get_linestyle() == "None"  # a ring, not an invisible line
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    for text in ax.texts:
        label = text.get_window_extent(renderer)
        assert box.x0 <= label.x0 and label.x1 <= box.x1 and label.y1 <= box.y1, text.get_text()
    # Artifacts of near-equal speed and quality (sd15's int4 and nf4): their labels printed over each other.
    close = pareto_figure([row("reference", 1.0, 100.0), row("torch-int4", 3.0, 40.0), row("torch-nf4", 3.01, 40.05),
                           row("torch-int8", 2.99, 39.98), row("slow", 2.0, 30.0)])
    close.canvas.draw()
    boxes = [(t.get_text(), t.get_window_extent(close.canvas.get_renderer())) for t in close.axes[0].texts]
    overlapping = [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]
    assert len(boxes) == 5 and not overlapping, overlapping
    assert close.axes[0].get_xlabel() == "latency, ms per image (median)" and close.axes[0].get_xlim()[1] > 3000  # ms, as the tables
    two = pareto_figure([row("reference", 1.0, 100.0), row("fast", 0.5, 40.0), row("slow", 2.0, 30.0)])
    [line] = two.axes[0].get_legend().legend_handles
    assert line.get_linestyle() == "--" and two.axes[0].get_legend().get_texts()[0].get_text() == "Pareto front"


def test_the_latency_plot_legend_covers_no_bar():
    """The legend sat inside the axes at the lower right, over the end of the last artifact's bar when it was the
    slowest (tiny-int8 in a tiny bench)."""
    from sdopt.bench.html import latency_figure

    def row(name, text, unet, vae):
        return {"artifact": name, "latency_median_s": text + unet + vae, "text_encoder_s": text, "unet_per_image_s": unet,
                "vae_decoder_s": vae, "other_s": 0.0, "unet_step_s": unet / 4}

    fig = latency_figure([row("tiny", 0.02, 0.9, 0.08), row("tiny-onnx", 0.01, 0.08, 0.02), row("tiny-int8", 0.07, 1.4, 0.05)], steps=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_width() > 0]
    assert bars and not [b for b in bars if legend.overlaps(b)]
    # In ms, as the tables beside it in report.html (the plots said seconds): tiny's text encoder, 0.02 s, is 20 ms.
    assert ax.get_xlabel().startswith("ms per image") and ax.patches[0].get_width() == pytest.approx(20)


def _small_report(warnings=()):
    """A report of two rows, the second failed, as render_html reads it (no images: the grid says so)."""
    ok = {"name": "tiny", "backend": "torch", "precision": "fp32", "status": "ok", "size_bytes": 6 * 2**20, "peak_memory_bytes": 500 * 2**20,
          "latency_s": {"median": 1.0, "p90": 1.2}, "latency_ratio_to_reference": 1.0, "quality": {"psnr_db": 100.0},
          "stages_s": {"text_encoder": 0.02, "unet_step": 0.2, "vae_decoder": 0.08, "unet_total": 0.8, "other": 0.01}}
    failed = {"name": "tiny-bad", "backend": "torch", "precision": "fp32", "status": "failed", "size_bytes": 6 * 2**20,
              "error": "tiny-bad/unet/diffusion_pytorch_model.safetensors does not match the sha256 recorded in sdopt.json"}
    return {"request": {"prompts": ["p"], "seeds": [0], "steps": 4, "height": 64, "width": 64, "guidance_scale": 7.5, "scheduler": "euler"},
            "machine": {"cpu": {"model": "AMD EPYC", "usable_cores": 2, "isa": ["avx2", "avx512_bf16"]}, "libraries": {}},
            "sdopt_version": "0", "reference": "tiny", "created": "now", "settings": {"runs": 1, "warmup": 0},
            "warnings": list(warnings), "artifacts": [ok, failed]}


@pytest.fixture
def render_html(monkeypatch):
    """render_html without drawing its plots (a second each)."""
    from sdopt.bench import html

    for plot in ("_latency_plot", "_pareto_plot", "_memory_plot"):
        monkeypatch.setattr(html, plot, lambda *args: "data:image/png;base64,")
    return html.render_html


def test_the_report_says_every_quality_column_is_the_worst_image():
    """report.md said "PSNR is the worst over the prompts and seeds" and nothing of SSIM and latent cos, which are the
    worst image's too (sdopt.quality.compare): read beside that sentence, they looked like means."""
    from sdopt.bench.report import markdown

    assert "PSNR, SSIM and latent cos are each the worst over the prompts and seeds" in markdown(_small_report())


def test_a_failed_rows_error_is_said_under_failures_not_in_its_table_cell(tmp_path, render_html):
    """The error sat in the HTML table's status cell too, and a sha256 mismatch's widened the table past the window."""

    page = render_html(_small_report(), tmp_path)
    assert "<td>failed</td>" in page and page.count("does not match the sha256") == 1
    assert page.index("<h3>Failures</h3>") < page.index("does not match the sha256")


def test_the_warnings_stand_out_in_report_html(tmp_path, render_html):
    """"timings too noisy to compare" was the summary list's last plain bullet in report.html, below the creation date."""
    noisy = "timings too noisy to compare: tiny (others took 70% of its CPUs)"
    page = render_html(_small_report([noisy]), tmp_path)
    assert f"<p class='warning'><strong>Warning:</strong> {noisy}</p>" in page and page.count(noisy) == 1
    assert page.index(noisy) < page.index("<h2>Results</h2>") and ".warning{" in page


def test_the_plots_name_the_machine_and_request_they_measured(tmp_path, render_html):
    """The CPU and its ISA features were named only at the top of report.html, a screen away from the plots."""
    page = render_html(_small_report(), tmp_path)
    plots = page[page.index("<h2>Plots</h2>"):page.index("<div class=\"plots\">")]
    assert "machine: AMD EPYC (2 cores; avx2 avx512_bf16)" in plots and "request: 1 prompt(s)" in plots


def test_the_image_grid_says_what_a_difference_maps_colours_mean(tmp_path, render_html):
    """The grid's heading said "difference (×4)" and no more: not what black, purple or yellow stood for."""
    from sdopt.bench.html import _diff_heatmap

    page = render_html(_small_report(), tmp_path)
    assert "black is identical, purple about 10-20 levels of 255, orange about 40, yellow 64 or more" in page
    ref = np.zeros((1, 3, 3), np.uint8)
    image = np.array([[[0, 0, 0], [15, 15, 15], [64, 64, 64]]], np.uint8)
    black, purple, yellow = _diff_heatmap(ref, image)[0].astype(int)
    assert black.sum() < 10 and purple[2] > purple[1] and yellow[0] > 200 and yellow[1] > 200


def test_the_image_grid_labels_no_artifact_reference_when_the_reference_failed(tmp_path):
    """With the reference failed, every other artifact's image had a grey "reference" box under it, as the reference's."""
    from PIL import Image

    from sdopt.bench.html import _image_grid

    report = _small_report()
    report["reference"] = "tiny-bad"  # the failed row (no samples)
    (tmp_path / "w").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "w" / "0.png")
    report["artifacts"][0].update(work_dir="w", samples=[{"prompt_index": 0, "seed": 0, "image": "0.png"}])
    grid = _image_grid(report, tmp_path)
    assert "<div class='ref'>no reference</div><figcaption>tiny</figcaption>" in grid
    assert "The reference, tiny-bad, made no images (it failed): no difference maps." in grid
    report["reference"] = "tiny"
    assert "<div class='ref'>reference</div><figcaption>tiny</figcaption>" in _image_grid(report, tmp_path)


def test_the_image_grid_names_the_failed_and_shows_every_prompt_first(tmp_path):
    """qa68: an artifact that failed before any image had no column and no word (5 rows, 4 columns); one whose images
    the table marks failed (NaN) was not marked in the grid; and of 3 prompts x 3 seeds the first 4 images in prompt
    order never showed prompt 3."""
    from PIL import Image

    from sdopt.bench.html import _image_grid

    report = _small_report()
    report["request"]["prompts"] = ["p1", "p2", "p3"]
    (tmp_path / "w").mkdir()
    samples = [{"prompt_index": p, "seed": s, "image": f"{p}-{s}.png"} for p in range(3) for s in (0, 1, 7)]
    for sample in samples:
        Image.new("RGB", (8, 8)).save(tmp_path / "w" / sample["image"])
    nan = {**report["artifacts"][0], "name": "tiny-nan", "status": "nan"}
    report["artifacts"] = [{**report["artifacts"][0], "work_dir": "w", "samples": samples}, report["artifacts"][1],
                           {**nan, "work_dir": "w", "samples": samples}]
    grid = _image_grid(report, tmp_path)
    assert "Not shown, having made no images (failed): tiny-bad." in grid
    assert "<figcaption>tiny-nan · failed (nan)</figcaption>" in grid and "<figcaption>tiny</figcaption>" in grid
    titles = [line.split("</h3>")[0] for line in grid.split("<h3>")[1:]]
    assert [t.split("”")[0].split("“")[1] + t.rsplit(" ", 1)[1] for t in titles] == ["p10", "p11", "p20", "p30"]


def test_an_ssim_or_cosine_just_below_1_is_not_printed_as_1():
    """qa68: 0.99999997 read "1", the same as identical images."""
    from sdopt.bench.report import _fmt

    assert (_fmt(0.99999997), _fmt(1.0), _fmt(0.9997), _fmt(52.63), _fmt(1e-9)) == ("0.99999997", "1", "0.9997", "52.63", "1e-09")


def test_a_small_real_share_of_peak_or_stage_time_is_not_printed_as_zero():
    """The tiny torchao int8 UNet's 0.43% of the probed peak read "0%" in the table and its per-stage note, as if
    nothing had been computed; a GPU's 0.03 ms stage read "0.0" ms."""
    from sdopt.bench.report import markdown

    report = _small_report()
    report["artifacts"][0].update(compute={"achieved_gflops": 0.2118, "fraction_of_peak": 0.0043},
                                  stage_compute={"unet_step": {"achieved_gflops": 0.2118, "fraction_of_peak": 0.0043, "precision_probed": "fp32"}})
    report["artifacts"][0]["stages_s"]["text_encoder"] = 0.00003
    text = markdown(report)
    row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
    assert row.endswith("| 0.2118 | 0.4% |") and "| 0.03 |" in row, row
    assert "UNet 0.2 (0.4% of fp32)" in text


def test_a_pipe_in_an_artifact_name_stays_in_its_markdown_table_cell():
    """A folder named "tiny-onnx|fp32" split its row's first cell in two: every column after it one to the right."""
    from sdopt.bench.report import markdown

    report = _small_report()
    report["artifacts"][0]["name"] = report["reference"] = "tiny-onnx|fp32"
    table = [line for line in markdown(report).splitlines() if line.startswith("|")]
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in table}) == 1, table
    assert table[2].startswith("| tiny-onnx\\|fp32 | torch | fp32 | ok | 1,000.0 |")


def test_the_request_line_says_the_warm_up_every_worker_runs_under_warmup_0():
    """--warmup 0 still warmed each worker up once (its first generate), and report.md said "after 0 warm-up"."""
    from sdopt.bench.report import markdown

    report = _small_report()
    report["settings"]["warmup"] = 0
    report["artifacts"][0].update(runs=1, warmups=1)
    assert "; 1 run(s) after 1 warm-up(s) (--warmup 0: a worker's first generate, of one prompt and seed, always warms up)\n" in markdown(report)
    report["settings"]["warmup"] = 2
    report["artifacts"][0]["warmups"] = 2
    assert "; 1 run(s) after 2 warm-up(s)\n" in markdown(report)


def test_an_img2img_reports_tables_show_the_vae_encoders_time(tmp_path, render_html):
    """The VAE encode was in no table column: an img2img row's stages fell short of its latency by the whole encode."""
    from sdopt.bench.report import markdown

    report = _small_report()
    assert "VAE enc" not in markdown(report) and "VAE enc" not in render_html(report, tmp_path)  # txt2img: unchanged
    report["artifacts"][0]["stages_s"]["vae_encoder"] = 0.463
    table = [line for line in markdown(report).splitlines() if line.startswith("|")]
    assert "| UNet step (ms) | VAE enc (ms) | VAE dec (ms) |" in table[0] and len({line.count("|") for line in table}) == 1
    assert "| 200.0 | 463.0 | 80.0 |" in table[2] and "| – | – | – |" in table[3]
    page = render_html(report, tmp_path)
    assert "<th>VAE enc (ms)</th><th>VAE dec (ms)</th>" in page and "<td>200.0</td><td>463.0</td><td>80.0</td>" in page


def test_results_csv_writes_counts_and_bytes_as_report_json_has_them(tmp_path, render_html):
    """A failed row's empty cells turned whole columns float: the CSV read 524288000.0 bytes and 1.0 runs."""
    import csv

    from sdopt.bench import report as report_module

    report = _small_report()
    report["artifacts"][0].update(runs=1, warmups=1)
    paths = report_module.write_reports(report, tmp_path)
    ok, failed = csv.DictReader(paths["csv"].open())
    assert (ok["peak_memory_bytes"], ok["runs"], ok["size_bytes"], ok["latency_median_s"]) == ("524288000", "1", "6291456", "1.0")
    assert failed["peak_memory_bytes"] == failed["runs"] == "" and failed["status"] == "failed"


def test_a_report_file_another_program_holds_open_on_windows_is_said_in_one_line(tmp_path, render_html, monkeypatch):
    """results.csv open in a spreadsheet on Windows: the rename of the new one was refused, a PermissionError traceback
    after every artifact had run. One line names the file and what to do; no temporary file is left beside it."""
    import os

    from sdopt.bench import report as report_module

    real_replace = os.replace

    def replace_as_windows(src, dst):  # a file another program holds open
        if str(dst).endswith("results.csv"):
            raise PermissionError(13, "Access is denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_as_windows)
    with pytest.raises(SdoptError, match=r"cannot replace .*results\.csv: Access is denied; if another program has it open"):
        report_module.write_reports(_small_report(), tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_reports_are_written_read_and_printed_under_a_locale_that_is_not_utf8(bench_report, tmp_path):
    """Under a non-UTF-8 locale (LC_ALL=C with PYTHONUTF8=0; a Latin-1 one lacks the dash) sdopt bench ran every
    artifact, then died writing report.md ('ascii' codec can't encode character '\\xd7'): no report at all. The report
    files are UTF-8 whatever the locale, and what sdopt prints of them is escaped where stdout cannot encode it."""
    import os
    import subprocess
    import sys

    out, _ = bench_report
    folder = tmp_path / "report"
    shutil.copytree(out, folder)
    for name in ("report.md", "report.html", "results.csv"):
        (folder / name).unlink()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    rewrite = ("import json, sys; from pathlib import Path; from sdopt.bench.report import write_reports; "
               "out = Path(sys.argv[1]); write_reports(json.loads((out / 'report.json').read_text(encoding='utf-8')), out)")
    done = subprocess.run([sys.executable, "-c", rewrite, str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\u00d7" in (folder / "report.md").read_text(encoding="utf-8")
    gate = subprocess.run([sys.executable, "-m", "sdopt.cli", "gate", str(folder / "report.json"), "--markdown", str(tmp_path / "gate.md")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert gate.returncode in (0, 1) and "Traceback" not in gate.stderr, gate.stderr
    assert (tmp_path / "gate.md").is_file()


def test_an_artifact_folder_name_the_locale_cannot_decode_names_its_row_in_text(tiny_model, tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) a bench of a folder named mödel 名前 ran every artifact, then died drawing the report's
    plot (matplotlib's TypeError on the name's undecoded bytes, surrogates): no report.md or report.html. The row's name
    is the folder's name read in UTF-8; its path stays the one given, which opens."""
    from sdopt.bench.artifacts import collect

    shutil.copytree(tiny_model, tmp_path / "mödel 名前")
    undecoded = str(tmp_path / "mödel 名前".encode().decode("ascii", "surrogateescape"))  # as sys.argv holds it there
    [entry] = collect([], undecoded)
    assert entry.name == "mödel 名前" and str(entry.path) == undecoded


def test_rows_whose_names_differ_only_in_unsafe_characters_keep_their_own_raw_folders():
    """Artifacts named 名前 and стиль (or 'a b' and 'a_b') shared raw/_/: the second worker's images replaced the first's,
    and the report compared the ONNX artifact's images with themselves (PSNR 100 dB, SSIM 1; 89.03 dB measured apart)."""
    from sdopt.bench.runner import slug

    names = ["名前", "стиль", "a b", "a_b", "a+b", "tiny@bf16", "caf\udce9"]
    assert len({slug(name) for name in names}) == len(names)
    assert slug("tiny@bf16") == "tiny@bf16" and re.fullmatch(r"[A-Za-z0-9_.@-]+", slug("名前"))  # safe names as they were


def test_process_peak_rss_counts_the_load(tiny_model, tiny_pipeline, monkeypatch, tmp_path):
    """process_peak_rss_bytes was read after the last generate, which resets the RSS high-water mark (runtime/memory.py):
    it was that generate's peak again (sd15 ONNX: 12,614,737,920 and 12,614,836,224 bytes), never the load's. A load that
    holds 200 MiB for a moment counts now; peak_memory_bytes stays the generate's own."""
    import sdopt
    from sdopt.bench.worker import measure

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def load(*a, **k):
        held = np.ones(200 * 2**20 // 8)  # touched: resident until freed
        del held
        return tiny_pipeline

    monkeypatch.setattr(sdopt, "load", load)
    job = {"output_dir": str(tmp_path), "path": str(tiny_model), "device": "cpu", "precision": None, "prompts": ["a fox"],
           "seeds": [0], "steps": 1, "guidance_scale": 7.5, "height": 64, "width": 64, "scheduler": "euler", "warmup": 1, "runs": 1,
           "max_seconds": None}
    before = rss()
    raw = measure(job)
    assert raw["process_peak_rss_bytes"] >= before + 190 * 2**20 > raw["peak_memory_bytes"], raw


def test_the_vae_encoder_of_img2img_is_a_stage_of_its_own_not_other(tiny_model, tiny_pipeline, monkeypatch, tmp_path):
    """A bench of img2img (--init-image) kept no VAE encoder time: the encode of the init image went into "other"
    (the scheduler, the loop, copies), the tiny ONNX artifact's ~2-15 ms of a ~95 ms image, read as loop overhead."""
    import statistics

    from PIL import Image

    import sdopt
    from sdopt.bench.assemble import _per_image_stages
    from sdopt.bench.rounds import merge_rounds
    from sdopt.bench.worker import measure

    Image.new("RGB", (64, 64), (120, 30, 200)).save(tmp_path / "init.png")
    monkeypatch.setattr(sdopt, "load", lambda *a, **k: tiny_pipeline)
    job = {"output_dir": str(tmp_path), "path": str(tiny_model), "device": "cpu", "precision": None, "prompts": ["a fox"],
           "seeds": [0], "steps": 2, "guidance_scale": 7.5, "height": 64, "width": 64, "scheduler": "euler", "warmup": 1, "runs": 1,
           "max_seconds": None, "init_image": str(tmp_path / "init.png"), "strength": 0.5}
    raw = measure(job)
    assert len(raw["vae_encoder_samples_s"]) == len(raw["latency_samples_s"]) == 1 and all(s > 0 for s in raw["vae_encoder_samples_s"])
    assert merge_rounds([raw, raw])["vae_encoder_samples_s"] == raw["vae_encoder_samples_s"] * 2  # --rounds joins them too
    # "other" is each call's total less every stage of it, the encoder included (numbers that say which is subtracted)
    made = {"latency_samples_s": [1.0], "text_encoder_samples_s": [0.1], "unet_total_samples_s": [0.5], "vae_decoder_samples_s": [0.2],
            "vae_encoder_samples_s": [0.15]}
    stages = _per_image_stages(made)
    assert stages["vae_encoder"] == 0.15 and stages["other"] == pytest.approx(0.05)
    assert "vae_encoder" not in _per_image_stages({**made, "vae_encoder_samples_s": [0.0]})  # txt2img: no such stage
    assert _per_image_stages(raw)["vae_encoder"] == statistics.median(raw["vae_encoder_samples_s"])


def test_the_memory_plot_draws_no_bar_for_a_peak_not_measured(monkeypatch):
    """A Windows row records its peak memory as null (not measured): the plot drew it as a bar of 0 MiB."""
    pytest.importorskip("matplotlib")
    from sdopt.bench import html

    drawn = []
    monkeypatch.setattr(html, "_png", lambda fig: drawn.append(fig) or "data:image/png;base64,")
    html._memory_plot([{"artifact": "measured", "peak_memory_bytes": 64 * 2**20, "size_bytes": 2**20},
                       {"artifact": "windows", "peak_memory_bytes": None, "size_bytes": 2**20}])
    peak_axes = drawn[0].axes[0]
    assert [(t.get_text().strip(), t.get_position()[1]) for t in peak_axes.texts] == [("not measured", 1)]


def test_a_plot_of_names_its_font_cannot_draw_warns_nothing():
    """An artifact named in CJK (名前/) made matplotlib warn once per character it has no glyph for: nine lines of
    'sdopt: warning: Glyph 21517 ... missing from font(s) DejaVu Sans' under one bench (walk qa92)."""
    pytest.importorskip("matplotlib")
    import warnings

    from sdopt.bench import html

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert html._memory_plot([{"artifact": "名前", "peak_memory_bytes": 2**20, "size_bytes": 2**20}]).startswith("data:image/png")
    assert [str(w.message) for w in caught] == []


def test_an_interrupt_while_the_report_is_assembled_still_writes_it(tiny_model, tmp_path, monkeypatch):
    """Ctrl-C (or a CI limit's SIGTERM) after every artifact had run, while the FLOPs were counted and the matmul peaks
    probed (seconds), ended the bench with no report at all and raw/ alone: every measurement lost. It is written as the
    partial report is (without the counts), and the bench still exits as interrupted."""
    from sdopt.bench import assemble
    from sdopt.bench.runner import run_bench
    from sdopt.bench.settings import BenchSettings

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assemble, "_unet_flops", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_bench([str(tiny_model)], str(tiny_model), out, BenchSettings.resolve(None, **SETTINGS), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["artifacts"]] == ["ok"]
    assert any("interrupted while the report was assembled: all 1 artifacts finished" in w for w in report["warnings"])
    assert any("FLOP counts and matmul peaks were not measured" in w for w in report["warnings"])
