"""`sdopt bench`: every artifact on the same prompts and seeds, one worker process each,
then speed, memory and quality against the reference, in one report."""

from __future__ import annotations

import datetime as _dt
import json
import re
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.bench import quality
from sdopt.bench.grounding import adherence, choose_judge
from sdopt.bench.profiles import BENCH_DEFAULTS, HardwareProfile
from sdopt.bench.rounds import merge_rounds, rotated
from sdopt.errors import SdoptError
from sdopt.manifest import Manifest, fingerprint_of, read_manifest
from sdopt.request import GenerateRequest
from sdopt.runtime.output_checks import broken_output
from sdopt.runtime.schedulers import check_scheduler
from sdopt.source import resolve

REPORT_SCHEMA = "sdopt.bench.report"
REPORT_SCHEMA_VERSION = 1
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; JSON has no inf, so it is capped here
UNITS = {
    "*_s": "seconds",
    "*_bytes": "bytes",
    "psnr_db": "decibels (capped at 100 for identical images)",
    "ssim": "1 = identical",
    "latent_cosine": "1 = identical direction",
    "max_abs_pixel_error": "8-bit levels (0-255)",
    "*_gflops": "GFLOP/s",
    "unet_flops_per_call": "floating-point operations",
    "steps_per_s": "UNet calls per second",
}


@dataclass
class BenchSettings:
    prompts: list[str]
    seeds: list[int]
    steps: int
    height: int
    width: int
    guidance_scale: float
    scheduler: str | None
    warmup: int
    runs: int
    device: str = "cpu"
    # An artifact's time budget: no further warm-up or measured run starts once it is spent (one
    # full run always happens; worker.measure): a precision the hardware only emulates (bf16 on
    # AVX2) would otherwise hold the matrix for hours.
    max_seconds: float | None = None
    judge: str = "auto"  # prompt adherence (sdopt.bench.grounding): auto, none, classical, openai, transformers
    run: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend -> run settings (a profile's [run] tables)
    # Passes over every artifact, the order rotating, each a fresh worker with its warm-up and ``runs``
    # measured runs: an artifact's samples then spread over the whole bench instead of one stretch of
    # it, so a shared machine's slow minutes land on every artifact alike (sdopt.bench.rounds).
    rounds: int = 1

    @classmethod
    def resolve(cls, profile: HardwareProfile | None, **overrides: Any) -> "BenchSettings":
        """Command-line values over the profile's [bench] over the defaults."""
        values = {}
        for key in ("prompts", "seeds", "steps", "height", "width", "guidance_scale", "scheduler", "warmup", "runs", "judge"):
            if overrides.get(key) is not None:
                values[key] = overrides[key]
            elif profile is not None:
                values[key] = profile.bench_setting(key)
            else:
                values[key] = BENCH_DEFAULTS[key]
        values["device"] = overrides.get("device") or (profile.device if profile else "cpu")
        values["run"] = dict(profile.run) if profile else {}
        values["rounds"] = 1 if overrides.get("rounds") is None else int(overrides["rounds"])
        budget = overrides.get("max_seconds")
        values["max_seconds"] = budget if budget is not None else (profile.bench.get("max_seconds") if profile else None)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.prompts:
            raise SdoptError("no prompts to run: the prompt file is empty; put one prompt per line")
        if not self.seeds:
            raise SdoptError("no seeds to run: give --seeds 0,1,2")
        if self.runs < 1 or self.warmup < 0:
            raise SdoptError(f"--runs {self.runs} / --warmup {self.warmup}: need at least 1 run and 0 or more warm-ups")
        if self.rounds < 1:
            raise SdoptError(f"--rounds {self.rounds}: give the number of passes over the artifacts (1 or more)")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise SdoptError(f"--max-seconds {self.max_seconds}: give a positive time budget per artifact in seconds")
        check_scheduler(self.scheduler)
        choose_judge(self.judge, self.prompts)  # an unknown judge, or prompts it cannot read: before any worker runs
        for prompt in self.prompts:
            GenerateRequest(prompt=prompt, steps=self.steps, height=self.height, width=self.width, guidance_scale=self.guidance_scale).validate()


# --- what is compared with what -------------------------------------------------------
@dataclass
class Entry:
    name: str
    path: Path
    manifest: Manifest
    precision: str | None = None  # a torch artifact may run in another precision (e.g. bf16)
    options: dict[str, Any] = field(default_factory=dict)  # load options the argument asked for (compile)
    request: dict[str, Any] = field(default_factory=dict)  # request fields the argument set (guidance_end)


def _model_fingerprint(m: Manifest) -> str | None:
    """The fingerprint of the weights this artifact was made from (its own, for a source checkpoint)."""
    if m.source.get("fingerprint"):
        return m.source["fingerprint"]
    if m.backend == "torch" and all(f.sha256 for c in m.components.values() for f in c.files):
        return fingerprint_of(m.components)
    return None


def parse_artifact_arg(text: str) -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    """PATH[@PRECISION][+compile[=SETTING]][+guidance-end=F]: a torch artifact in another precision (models/sd15@bf16),
    and/or compiled with torch.compile (models/sd15@fp16+compile=max-autotune; sdopt.runtime.compiled); any artifact
    with its requests' guidance truncated (models/sd15-ov+guidance-end=0.5; sdopt.runtime.guidance).
    Returns (path, precision, load options, request fields)."""
    options: dict[str, Any] = {}
    request: dict[str, Any] = {}
    match = re.fullmatch(r"(.+?)\+guidance-end=([^+@]*)", text)
    if match:
        from sdopt.request import GenerateRequest

        try:
            request["guidance_end"] = float(match.group(2))
        except ValueError:
            raise SdoptError(f"{text}: +guidance-end={match.group(2)} is not a number; give the fraction of the steps that run guided, e.g. +guidance-end=0.5") from None
        GenerateRequest(prompt="", guidance_end=request["guidance_end"]).validate()
        text = match.group(1)
    match = re.fullmatch(r"(.+?)\+compile(?:=([a-z_-]+))?", text)
    if match:
        from sdopt.runtime.compiled import compile_setting

        text, options["compile"] = match.group(1), compile_setting(match.group(2) or True, "cuda")  # the device is checked at load
    match = re.fullmatch(r"(.+)@(fp32|fp16|bf16)", text)
    return (match.group(1), match.group(2), options, request) if match else (text, None, options, request)


def artifact_label(path: Path, precision: str | None, options: dict[str, Any], request: dict[str, Any] | None = None) -> str:
    """How a bench row names an artifact run: the folder, then what the argument changed."""
    return (path.name + (f"@{precision}" if precision else "") + (f"+compile={options['compile']}" if options.get("compile") else "")
            + (f"+guidance-end={request['guidance_end']:g}" if (request or {}).get("guidance_end") is not None else ""))


def collect(artifacts: list[str], reference: str) -> list[Entry]:
    """The reference first, then every artifact, with unique names; refuses incomparable sets."""
    entries, names = [], set()
    for text in [reference, *artifacts]:
        path_text, precision, options, request = parse_artifact_arg(text)
        path = resolve(path_text)
        manifest = read_manifest(path)
        name = artifact_label(path, precision, options, request)
        if options and manifest.backend != "torch":
            raise SdoptError(f"{text}: +compile runs torch.compile, on torch artifacts only; {path} is a {manifest.backend} artifact")
        if any(e.path == path and e.precision == precision and e.options == options and e.request == request for e in entries):
            continue  # the reference given again among the artifacts
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        entries.append(Entry(name, path, manifest, precision, options, request))
    ref = entries[0]
    for e in entries[1:]:
        if e.manifest.family != ref.manifest.family:
            raise SdoptError(f"{e.name} is a {e.manifest.family} model and the reference a {ref.manifest.family}: they cannot be compared")
        keys = ("latent_channels", "vae_scale_factor", "cross_attention_dim")
        diff = [k for k in keys if e.manifest.model.get(k) != ref.manifest.model.get(k)]
        if diff:
            raise SdoptError(
                f"{e.name} and the reference {ref.name} have different shapes ({', '.join(f'{k}: {e.manifest.model.get(k)} vs {ref.manifest.model.get(k)}' for k in diff)}): "
                "give a reference made from the same model"
            )
        a, b = _model_fingerprint(e.manifest), _model_fingerprint(ref.manifest)
        if a and b and a != b:
            raise SdoptError(
                f"{e.name} was made from other weights than the reference {ref.name} (fingerprints {a[:12]} vs {b[:12]}): "
                "quality against it would mean nothing; give the checkpoint it was exported from as --reference"
            )
    return entries


def check_static_shapes(entries: list[Entry], settings: BenchSettings) -> None:
    for e in entries:
        shapes = e.manifest.static_shapes
        if shapes and (shapes.get("height"), shapes.get("width")) != (settings.height, settings.width):
            raise SdoptError(
                f"{e.name} is built for {shapes.get('height')}x{shapes.get('width')} only; the bench asks for "
                f"{settings.height}x{settings.width}: pass --height {shapes.get('height')} --width {shapes.get('width')}"
            )


# --- running ----------------------------------------------------------------------------
def worker_job(entry: Entry, settings: BenchSettings, output_dir: str) -> dict:
    """What one worker measures (python -m sdopt.bench.worker JOB.json RESULT.json), wherever it runs."""
    return {**asdict(settings), "path": str(entry.path), "precision": entry.precision, "output_dir": output_dir,
            "run_settings": settings.run.get(entry.manifest.backend), "load_options": entry.options, "request_options": entry.request}


def worker_command(job_file: Path, result_file: Path) -> list[str]:
    return [sys.executable, "-m", "sdopt.bench.worker", str(job_file), str(result_file)]


def _run_worker(entry: Entry, settings: BenchSettings, out: Path, timeout: float | None, round_index: int | None = None) -> dict:
    work = out / "raw" / slug(entry.name)
    if round_index is not None:
        work = work / f"round-{round_index + 1}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps(worker_job(entry, settings, str(work)), indent=2))
    with open(work / "worker.log", "w") as log:
        try:
            proc = subprocess.run(worker_command(work / "job.json", work / "result.json"), stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"did not finish within {timeout:.0f} s"}
    if not (work / "result.json").is_file():
        return {"status": "failed", "error": f"the worker process died (exit status {proc.returncode}); see {work / 'worker.log'}"}
    result = json.loads((work / "result.json").read_text())
    result["work_dir"] = str(work.relative_to(out))
    return result


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def _latency(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    median = statistics.median(s)
    mad = statistics.median(abs(x - median) for x in s)
    return {
        "median": median,
        "p90": float(np.percentile(s, 90)),
        "min": s[0],
        "max": s[-1],
        "mean": statistics.fmean(s),
        "n": len(s),
        # Run-to-run noise, relative to the median: the median absolute deviation, and from it the
        # standard error of the median (1.4826·MAD estimates σ; the median's error is 1.2533·σ/√n).
        # The gate calls no change inside this noise a regression.
        "rel_mad": mad / median if median else 0.0,
        "rel_stderr": 1.2533 * 1.4826 * mad / median / len(s) ** 0.5 if median else 0.0,
    }


def _summarise(entry: Entry, raw: dict, reference: dict | None, out: Path, flops: int | None, peaks: dict, judge=None, prompts=(),
               stage_flops: dict[str, float] | None = None) -> dict:
    m = entry.manifest
    row: dict[str, Any] = {
        "name": entry.name,
        "path": str(entry.path),
        "backend": m.backend,
        "precision": entry.precision or m.precision,
        "quantization": {n: c.quantization for n, c in m.components.items() if c.quantization} or None,
        "static_shapes": m.static_shapes,
        # Levers that change what is computed (a tiny decoder): judged by adherence, not PSNR alone.
        "replaced": {n: c.replaced for n, c in m.components.items() if c.replaced} or None,
        "cache_interval": (m.export.get("deep_cache") or {}).get("interval"),
        "guidance_end": guidance_end_of(entry),
        "artifact_id": m.artifact_id,
        "size_bytes": m.size_bytes,
        "status": raw["status"],
        "error": raw.get("error"),
        # Where a cluster ran it (sdopt.cluster.bench): the node, and that node's machine fingerprint.
        **{k: raw[k] for k in ("node", "machine", "attempts") if raw.get(k) is not None},
    }
    if raw["status"] != "ok":
        return row
    latency = _latency(raw["latency_samples_s"])
    # A step-cached artifact's steps are of two kinds (whole, shallow), and so are truncated guidance's
    # (guided, conditional alone): their median is one kind's time, so the UNet step is the mean over
    # the steps, and its FLOPs the mean over them (_stage_flops).
    mixed = (row["cache_interval"] or 1) > 1 or (row["guidance_end"] or 1) < 1
    unet_step = (statistics.mean if mixed else statistics.median)(raw["unet_step_samples_s"])
    row.update(
        {
            "load_s": raw["load_s"],
            "first_generate_s": raw["first_generate_s"],
            "runs": raw["runs"],
            "rounds": raw.get("rounds", 1),  # separate workers whose samples were joined (sdopt.bench.rounds)
            "warmups": raw.get("warmups"),
            "first_generate_counted": raw.get("first_generate_counted", False),
            "latency_s": latency,
            "run_settings": raw.get("run_settings"),
            **({"compiled": raw["compiled"]} if raw.get("compiled") else {}),
            "stages_s": {
                "text_encoder": statistics.median(raw["text_encoder_samples_s"]),
                "unet_step": unet_step,
                "vae_decoder": statistics.median(raw["vae_decoder_samples_s"]),
            },
            "steps_per_s": 1.0 / unet_step,
            "peak_memory_bytes": raw["peak_memory_bytes"],
            "peak_memory_kind": raw["peak_memory_kind"],
            "process_peak_rss_bytes": raw["process_peak_rss_bytes"],
            "samples": raw["samples"],
            "work_dir": raw["work_dir"],
        }
    )
    probe = peaks.get(_compute_precision(entry, raw)) or {}  # the ceiling of the precision the UNet computed in
    if flops:
        per_step = (stage_flops or {}).get("unet_step") or flops  # averaged over whole and shallow steps when caching
        achieved = per_step / unet_step / 1e9
        row["compute"] = {
            "achieved_gflops": achieved,
            "peak_gflops": probe.get("gflops"),
            "precision_probed": probe.get("precision_probed"),
            "fraction_of_peak": achieved / probe["gflops"] if probe.get("gflops") else None,
        }
    if stage_flops:
        # Every stage against the ceiling of the precision it ran in (the UNet: per step, averaged
        # over whole and shallow steps when caching): an int8 UNet beside a bf16 decoder has two.
        row["stage_compute"] = {}
        for stage, count in stage_flops.items():
            if not (seconds := row["stages_s"].get(stage)):
                continue
            ceiling = peaks.get(_compute_precision(entry, raw, STAGE_COMPONENTS[stage])) or {}
            row["stage_compute"][stage] = {
                "flops": count,
                "achieved_gflops": count / seconds / 1e9,
                "precision_probed": ceiling.get("precision_probed"),
                "fraction_of_peak": count / seconds / 1e9 / ceiling["gflops"] if ceiling.get("gflops") else None,
            }
    images, latents = _load_samples(out / raw["work_dir"], raw["samples"])
    broken = next((why for i, l in zip(images, latents) if (why := broken_output(i, l))), None)
    if judge is not None:
        row["adherence"] = adherence(judge, images, row["samples"], list(prompts))
    if reference is not None and reference.get("status") == "ok":
        ref_images, ref_latents = _load_samples(out / reference["work_dir"], reference["samples"])
        q = quality.compare(ref_images, images, ref_latents, latents)
        row["quality"] = {k: (min(v, PSNR_CAP_DB) if k.startswith("psnr") else v) for k, v in q.items()}
        row["latency_ratio_to_reference"] = latency["median"] / reference["latency_s"]["median"]
    if broken:
        row["status"], row["error"] = "failed", broken
    return row


# Schemes whose UNet computes in int8 (activations and weights): measured against the int8 matmul's ceiling.
INT8_COMPUTE_SCHEMES = ("int8-static", "int8-dynamic")


STAGE_COMPONENTS = {"text_encoder": "text_encoder", "unet_step": "unet", "vae_decoder": "vae_decoder"}


def _compute_precision(entry: Entry, raw: dict, component: str = "unet") -> str:
    """The precision a component computed in: int8 where its activations were quantized too (by the
    artifact's scheme, or by the runtime itself: the backend's answer), else what the backend says it ran
    (OpenVINO asks the compiled model), else the artifact's precision."""
    entry_component = entry.manifest.components.get(component)
    if entry_component and (entry_component.quantization or {}).get("scheme") in INT8_COMPUTE_SCHEMES:
        return "int8"
    if (raw.get("computes_by_component") or {}).get(component) == "int8":
        return "int8"
    runs = (raw.get("runs_by_component") or {}).get(component) or (raw.get("compute_precision") if component == "unet" else None)
    return runs if runs not in (None, "unknown") else entry.precision or entry.manifest.precision


def _load_samples(folder: Path, samples: list[dict]):
    from PIL import Image

    images = [np.asarray(Image.open(folder / s["image"]).convert("RGB")) for s in samples]
    latents = [np.load(folder / s["latents"]) for s in samples]
    return images, latents


def _unet_flops(reference: Entry, settings: BenchSettings) -> int | None:
    from sdopt.bench.flops import unet_flops_per_call

    unet_cfg = reference.path / "unet" / "config.json"
    if not unet_cfg.is_file():
        return None
    batch = 2 if settings.guidance_scale > 1 else 1
    return unet_flops_per_call(unet_cfg, batch, settings.height, settings.width, reference.manifest.model["vae_scale_factor"])


def guidance_end_of(entry: Entry) -> float | None:
    """The truncated-guidance fraction an entry's requests run with (its argument's, else the artifact's default); None: off."""
    end = entry.request.get("guidance_end", (entry.manifest.export or {}).get("guidance_end"))
    return None if end is None or end >= 1 else float(end)


def _stage_flops(entry: Entry, reference: Entry, settings: BenchSettings, unet_whole: int | None) -> dict[str, float] | None:
    """FLOPs per call of each stage of this artifact: the reference's text encoder; its UNet (averaged over whole
    and shallow steps when it caches); its own VAE decoder (a tiny one when replaced). None when configs are missing."""
    from sdopt.bench.flops import text_encoder_flops, unet_flops_per_call, vae_decoder_flops
    from sdopt.rewrite import recorded
    from sdopt.runtime.guidance import guided_steps
    from sdopt.stepcache.schedule import runs_whole

    unet_cfg = reference.path / "unet" / "config.json"
    te_cfgs = [reference.path / name / "config.json" for name in reference.manifest.pipeline_family.text_encoders]
    if not (unet_whole and unet_cfg.is_file() and all(c.is_file() for c in te_cfgs)):
        return None
    model, guided = reference.manifest.model, settings.guidance_scale > 1
    factor = int(model["vae_scale_factor"])
    decoder = entry.manifest.components.get("vae_decoder")
    replaced = bool(decoder and decoder.replaced)
    vae_cfg = entry.path / decoder.folder / "config.json" if replaced else reference.path / reference.manifest.components["vae_decoder"].folder / "config.json"
    latent = (1, int(model["latent_channels"]), settings.height // factor, settings.width // factor)
    interval = int((entry.manifest.export.get("deep_cache") or {}).get("interval", 1))
    shallow = unet_flops_per_call(unet_cfg, 2 if guided else 1, settings.height, settings.width, factor, shallow=True) if interval > 1 else 0
    # Per step: the whole UNet or its shallow branch; half of either once truncated guidance has ended.
    n_guided = guided_steps(settings.steps, guidance_end_of(entry) or 1.0) if guided else settings.steps
    unet = sum((unet_whole if runs_whole(i, interval) else shallow) * (1.0 if i < n_guided else 0.5) for i in range(settings.steps)) / settings.steps
    return {
        "text_encoder": float(sum(text_encoder_flops(c, 2 if guided else 1) for c in te_cfgs)),  # every text encoder: the stage times them together
        "unet_step": unet,
        "vae_decoder": float(vae_decoder_flops(vae_cfg, latent, tiny=replaced, rewritten="vae_decoder" in recorded(entry.manifest.export))) if vae_cfg.is_file() else None,
    }


def _stage_flops_or_none(entry: Entry, reference: Entry, settings: BenchSettings, unet_whole: int | None) -> dict[str, float] | None:
    """Counting is a report's extra: a model the counter cannot build leaves the per-stage figures out, not the report."""
    try:
        counts = _stage_flops(entry, reference, settings, unet_whole)
    except Exception as exc:  # noqa: BLE001 - any failure of FlopCounterMode on a meta model
        print(f"sdopt bench: per-stage FLOPs of {entry.name} not counted: {exc}", file=sys.stderr)
        return None
    return {k: v for k, v in counts.items() if v} if counts else None


def run_bench(
    artifacts: list[str],
    reference: str,
    out: str | Path,
    settings: BenchSettings,
    profile: HardwareProfile | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    entries = collect(artifacts, reference)
    check_static_shapes(entries, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    rounds = settings.rounds
    results: dict[str, list[dict]] = {entry.name: [] for entry in entries}
    warnings = []
    try:
        with tqdm(total=len(entries) * rounds, desc="bench", unit="artifact", file=sys.stderr, disable=not progress) as bar:
            for r in range(rounds):
                for entry in rotated(entries, r):
                    bar.set_postfix_str(entry.name + (f" (round {r + 1}/{rounds})" if rounds > 1 else ""))
                    done = results[entry.name]
                    if not (done and done[-1].get("status") != "ok"):  # a failed artifact is not tried again
                        done.append(_run_worker(entry, settings, out, timeout, r if rounds > 1 else None))
                    bar.update()
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM from a time limit (sdopt.cli turns it into this): the running worker is
        # killed (subprocess.run does so on any exception), and what finished still makes a report.
        warnings.append(interrupted_warning(results, entries[0].name))
        print(f"sdopt bench: {warnings[-1]}", file=sys.stderr)
    raws = {name: merge_rounds(done) if done else NOT_RUN for name, done in results.items()}
    return assemble_report(entries, raws, settings, out, profile, warnings=warnings)


NOT_RUN = {"status": "failed", "error": "not run: the bench was interrupted before this artifact's turn"}


def interrupted_warning(results: dict[str, list[dict]], reference: str) -> str:
    """What an interrupted bench says in its report, or KeyboardInterrupt again when nothing can be compared."""
    ref = results[reference]
    if not ref or ref[-1].get("status") != "ok":
        raise KeyboardInterrupt  # without the reference's images and timings there is nothing to compare
    finished = sum(1 for done in results.values() if done and done[-1].get("status") == "ok")
    return (f"interrupted: {finished} of {len(results)} artifacts finished and are reported; the others are marked not run "
            "(the artifact running when it stopped was killed)")


def precisions_to_probe(entries: list[Entry], raws: dict[str, dict]) -> list[str]:
    """The precisions the compute actually ran in (a bf16 OpenVINO artifact runs fp32 on a CPU without
    bf16): their matmul ceilings are probed, else the fraction of peak compares with the wrong one."""
    return sorted({_compute_precision(e, raws[e.name], c) for e in entries for c in STAGE_COMPONENTS.values()})


def probe_peaks(precisions: list[str], device: str) -> dict[str, dict]:
    from sdopt.bench.flops import matmul_peak_gflops

    return {p: matmul_peak_gflops(p, device) for p in precisions}


def assemble_report(entries: list[Entry], raws: dict[str, dict], settings: BenchSettings, out: Path, profile: HardwareProfile | None = None,
                    machine: dict | None = None, peaks: dict | None = None, cluster: dict | None = None, warnings: list[str] = ()) -> dict:
    """The report from the workers' raw results (out/raw/*/result.json): metrics, quality, files.
    ``machine`` and ``peaks`` default to this machine's; a cluster run passes those of the node kind that ran the jobs."""
    from sdopt import __version__
    from sdopt.bench.machine import fingerprint

    flops = _unet_flops(entries[0], settings)
    peaks = peaks if peaks is not None else probe_peaks(precisions_to_probe(entries, raws), settings.device)

    ref_raw = raws[entries[0].name]
    if ref_raw["status"] == "ok":
        ref_raw["latency_s"] = _latency(ref_raw["latency_samples_s"])
    judge = choose_judge(settings.judge, settings.prompts)
    rows = [_summarise(e, raws[e.name], ref_raw, out, flops, peaks, judge, settings.prompts, _stage_flops_or_none(e, entries[0], settings, flops))
            for e in entries]
    ref_fp = _model_fingerprint(entries[0].manifest)
    machine = machine or fingerprint()
    mismatch = [w for w in [profile.mismatch(machine) if profile else None] if w]
    for w in mismatch:
        print(f"sdopt bench: warning: {w}", file=sys.stderr)
    warnings = [*mismatch, *warnings]
    report = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sdopt_version": __version__,
        "machine": machine,
        "profile": profile.name if profile else None,
        "warnings": warnings,
        "request": {
            "prompts": settings.prompts,
            "seeds": settings.seeds,
            "steps": settings.steps,
            "height": settings.height,
            "width": settings.width,
            "guidance_scale": settings.guidance_scale,
            "scheduler": settings.scheduler,
            "images_per_call": 1,
        },
        "settings": {"warmup": settings.warmup, "runs": settings.runs, "rounds": settings.rounds, "max_seconds": settings.max_seconds, "device": settings.device},
        "model": {"fingerprint": ref_fp, "family": entries[0].manifest.family, **entries[0].manifest.model},
        "reference": entries[0].name,
        "unet_flops_per_call": flops,
        "matmul_peak_gflops": peaks,
        "units": UNITS,
        "artifacts": rows,
        **({"cluster": cluster} if cluster else {}),
    }
    from sdopt.bench.report import write_reports

    write_reports(report, out)
    return report
