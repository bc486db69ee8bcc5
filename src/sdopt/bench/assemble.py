"""A bench report from its workers' raw results: latency, per-stage time and FLOP rates against the
matmul ceiling of the precision each stage ran in, memory, and quality against the reference."""

from __future__ import annotations

import datetime as _dt
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sdopt import quality
from sdopt.bench.artifacts import Entry, guidance_end_of, model_fingerprint, model_identity
from sdopt.bench.forkserver import effective_worker_start
from sdopt.bench.grounding import adherence, choose_judge
from sdopt.bench.profiles import HardwareProfile
from sdopt.bench.settings import BenchSettings
from sdopt.errors import SdoptError
from sdopt.manifest import identity_of
from sdopt.request import is_finite_number
from sdopt.runtime.output_checks import broken_output

REPORT_SCHEMA = "sdopt.bench.report"
REPORT_SCHEMA_VERSION = 1
PSNR_CAP_DB = quality.PSNR_CAP_DB  # identical images have infinite PSNR; JSON has no inf, so it is capped here
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
        **({"compile": entry.options["compile"]} if entry.options.get("compile") else {}),  # +compile=SETTING: how it ran
        "artifact_id": m.artifact_id,
        # Its files blind to the library versions that wrote their configs: what the gate compares a reference by.
        "identity": identity_of(m.components, entry.path),
        "size_bytes": m.size_bytes,
        "status": raw["status"],
        "error": raw.get("error"),
        # Where a cluster ran it (sdopt.cluster.bench): the node, and that node's machine fingerprint.
        **{k: raw[k] for k in ("node", "machine", "attempts") if raw.get(k) is not None},
    }
    if raw["status"] != "ok":
        return row
    # Beside the samples' own spread, what other processes took of the worker's CPUs while they were timed: a
    # machine busy for the whole of one artifact's runs leaves its samples agreeing with each other, all slow.
    latency = {**_latency(raw["latency_samples_s"]), "others_cpu_share": raw.get("others_cpu_share")}
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
                **_per_image_stages(raw),
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
    broken = (next((why for i, l in zip(images, latents) if (why := broken_output(i, l))), None)
              or next((why for s in raw["samples"] for why in s.get("problems", ())), None))
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
    (OpenVINO asks the compiled model; torch: its module's dtype), else the manifest's."""
    entry_component = entry.manifest.components.get(component)
    if entry_component and (entry_component.quantization or {}).get("scheme") in INT8_COMPUTE_SCHEMES:
        return "int8"
    if (raw.get("computes_by_component") or {}).get(component) == "int8":
        return "int8"
    runs = (raw.get("runs_by_component") or {}).get(component) or (raw.get("compute_precision") if component == "unet" else None)
    if runs not in (None, "unknown"):
        return runs
    # The exporter's record for the component (an fp16 ONNX artifact keeps SDXL's VAE fp32), else the artifact's.
    return (entry_component.precision if entry_component else None) or entry.precision or entry.manifest.precision


def _per_image_stages(raw: dict) -> dict[str, float]:
    """The UNet's time per image, the VAE encoder's (img2img and inpainting), and what no stage accounts for (the
    scheduler, the loop, copies), each the median of its per-call values: medians of parts do not add up to the median
    of the whole, so "other" is measured call by call, not taken as the whole's median less the parts'."""
    unet = raw.get("unet_total_samples_s")
    if not unet or len(unet) != len(raw["latency_samples_s"]):  # a report from before these were kept per call
        return {}
    encoder = raw.get("vae_encoder_samples_s") or [0.0] * len(unet)  # none before img2img's encoder was kept
    other = [total - te - u - vae - enc for total, te, u, vae, enc in
             zip(raw["latency_samples_s"], raw["text_encoder_samples_s"], unet, raw["vae_decoder_samples_s"], encoder)]
    return {"unet_total": statistics.median(unet), **({"vae_encoder": statistics.median(encoder)} if any(encoder) else {}),
            "other": max(0.0, statistics.median(other))}


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
    from sdopt.runtime.embedded_guidance import runs_guided

    batch = 2 if runs_guided(settings.guidance_scale, reference.manifest.model) else 1
    return unet_flops_per_call(unet_cfg, batch, settings.height, settings.width, reference.manifest.model["vae_scale_factor"])


def _stage_flops(entry: Entry, reference: Entry, settings: BenchSettings, unet_whole: int | None) -> dict[str, float] | None:
    """FLOPs per call of each stage of this artifact: the reference's text encoder; its UNet (averaged over whole
    and shallow steps when it caches); its own VAE decoder (a tiny one when replaced). None when configs are missing."""
    from sdopt.bench.flops import text_encoder_flops, unet_flops_per_call, vae_decoder_flops
    from sdopt.runtime.embedded_guidance import runs_guided
    from sdopt.runtime.guidance import guided_steps
    from sdopt.stepcache.schedule import runs_whole

    unet_cfg = reference.path / "unet" / "config.json"
    te_cfgs = [reference.path / name / "config.json" for name in reference.manifest.pipeline_family.text_encoders]
    if not (unet_whole and unet_cfg.is_file() and all(c.is_file() for c in te_cfgs)):
        return None
    model = reference.manifest.model
    guided = runs_guided(settings.guidance_scale, model)
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
        "vae_decoder": float(vae_decoder_flops(vae_cfg, latent, tiny=replaced, rewritten=_upsample_rewritten(entry))) if vae_cfg.is_file() else None,
    }


def _upsample_rewritten(entry: Entry) -> bool:
    """Whether the artifact's VAE decoder computes its upsamplers as the export's transposed convolutions: recorded
    for it, and not turned back by ONNX Runtime's int8 quantizer (its quantization's ``undone_rewrites``), whose graph
    runs upsample + 3x3 convolution again, the plain form's FLOPs."""
    from sdopt.rewrite import recorded

    decoder = entry.manifest.components.get("vae_decoder")
    undone = ((decoder.quantization if decoder else None) or {}).get("undone_rewrites") or {}
    return "upsample_transposed_conv" in recorded(entry.manifest.export).get("vae_decoder", {}) and "upsample_transposed_conv" not in undone


def _stage_flops_or_none(entry: Entry, reference: Entry, settings: BenchSettings, unet_whole: int | None) -> dict[str, float] | None:
    """Counting is a report's extra: a model the counter cannot build leaves the per-stage figures out, not the report."""
    try:
        counts = _stage_flops(entry, reference, settings, unet_whole)
    except Exception as exc:  # noqa: BLE001 - any failure of FlopCounterMode on a meta model
        print(f"sdopt bench: per-stage FLOPs of {entry.name} not counted: {exc}", file=sys.stderr)
        return None
    return {k: v for k, v in counts.items() if v} if counts else None


def precisions_to_probe(entries: list[Entry], raws: dict[str, dict]) -> list[str]:
    """The precisions the compute actually ran in (a bf16 OpenVINO artifact runs fp32 on a CPU without
    bf16): their matmul ceilings are probed, else the fraction of peak compares with the wrong one."""
    return sorted({_compute_precision(e, raws[e.name], c) for e in entries for c in STAGE_COMPONENTS.values()})


def probe_peaks(precisions: list[str], device: str) -> dict[str, dict]:
    """None probed on a device torch has no name for (OpenVINO's gpu, npu, auto): the probe is a torch matmul."""
    from sdopt.bench.flops import matmul_peak_gflops

    if not probes(device):
        return {}
    return {p: matmul_peak_gflops(p, device) for p in precisions}


def probes(device: str) -> bool:
    from sdopt.runtime.backends import device_kind

    return device_kind(device) in ("cpu", "cuda")


def _calibrated_on_the_measured_image(entries: list[Entry], settings: BenchSettings) -> list[str]:
    """Rows int8-calibrated on the very image this bench repaints: their quality would be flattered, so the report says so."""
    if not settings.init_image:
        return []
    from sdopt.file_reading import sha256_file
    from sdopt.quant.inpainting_calibration import calibrated_on

    digest = sha256_file(settings.init_image)
    return [f"{e.name}: its {', '.join(names)} calibrated on the image this bench repaints ({Path(settings.init_image).name}), so its "
            "quality here is measured on what it was fitted to; bench on another image, or quantize with other --calibration-images"
            for e in entries if (names := calibrated_on(e.manifest, digest))]


# A row's latency spread past which its ratios say more about the machine than the artifact. The committed reports'
# 127 rows of 3 or more samples: median 2.4%, all but one under 15%; that one 27%, an H200 eager row whose median moved
# 556-846 ms between runs of one lease. The demo on a 2-core host loaded 3x over by other jobs: 90%.
NOISY_REL_MAD = 0.2
# The share of a worker's CPUs other processes may take while it is timed before its row is not comparable. The
# spread above cannot see a machine busy for the whole of one artifact's runs (all its samples slow alike): the
# demo under load benched torch int8 "17.1x" the reference with every row's spread under 20%. scripts/ci_bench.sh on a
# 2-core Zen 4 VM (docs/measurements/bench_contention.json): quiet, 0-2.3% in each of its 15 worker rounds; while
# other jobs ran (load average 5.6), 37-87%, and ONNX "15x" the reference. One busy job on one of two cores is 50%. Not a p90 rule:
# the CI baselines' tiny rows reach p90 = 1.43x their median on a quiet machine (the tiny model's timings swing
# between processes), where busy rows of the committed reports reached 2.4x.
BUSY_OTHERS_SHARE = 0.25


def crowded(row: dict) -> float | None:
    """The share of its CPUs other processes took while a row was timed, where it is past BUSY_OTHERS_SHARE; else None."""
    share = (row.get("latency_s") or {}).get("others_cpu_share")
    return share if row.get("status") == "ok" and is_finite_number(share) and share > BUSY_OTHERS_SHARE else None


def too_noisy(row: dict) -> str | None:
    """Why a row's timings cannot be compared (its spread past NOISY_REL_MAD, or other processes' share of its
    CPUs past BUSY_OTHERS_SHARE while it was timed), as "spread 44%" / "others took 61% of its CPUs"; else None."""
    if row.get("status") != "ok":
        return None
    mad, share = (row.get("latency_s") or {}).get("rel_mad"), crowded(row)
    reasons = []
    if is_finite_number(mad) and mad > NOISY_REL_MAD:
        reasons.append(f"spread {mad:.0%}")
    if share is not None:
        reasons.append(f"others took {share:.0%} of its CPUs")
    return ", ".join(reasons) or None


def _noisy(rows: list[dict], rounds: int = 1) -> list[str]:
    """A warning naming the rows whose timings cannot be compared (the machine was busy); ``rounds``, the bench's, for
    its advice (a bench that ran --rounds 2 was told to run "with --rounds K")."""
    named = [f"{r['name']} ({why})" for r in rows if (why := too_noisy(r)) is not None]
    if not named:
        return []
    # Said apart: a spread alone is runs that disagree (the tiny model's ONNX row reaches 22% between processes on a
    # quiet machine, others taking 1%); only a share says other work held the CPUs.
    return [f"timings too noisy to compare: {', '.join(named)} (a spread is the median absolute deviation of the "
            f"latency over its median, past {NOISY_REL_MAD:.0%}: its runs disagree; a share is of the CPUs the bench ran "
            f"on that other processes took while it was timed, past {BUSY_OTHERS_SHARE:.0%}: the machine was busy); "
            f"run again on a quiet machine, or {with_more_rounds(rounds)}"]


def with_more_rounds(rounds: int | None) -> str:
    """The advice to time again in more rounds, for a bench that ran ``rounds`` (the bench's, the gate's, optimize's)."""
    return "with --rounds K" if (rounds or 1) <= 1 else f"with more rounds than {rounds}"


def assemble_report(entries: list[Entry], raws: dict[str, dict], settings: BenchSettings, out: Path, profile: HardwareProfile | None = None,
                    machine: dict | None = None, peaks: dict | None = None, cluster: dict | None = None, warnings: list[str] = (),
                    counted: bool = True) -> dict:
    """The report from the workers' raw results (out/raw/*/result.json): metrics, quality, files.
    ``machine`` and ``peaks`` default to this machine's; a cluster run passes those of the node kind that ran the jobs.
    ``counted=False`` leaves out the FLOP counts and the matmul peak probes (seconds of imports and matmuls), and a judge
    that asks a model (a VLM: minutes): an interrupted bench's partial report, written before a CI runner's grace period ends."""
    from sdopt import __version__
    from sdopt.machine import fingerprint

    flops = _unet_flops(entries[0], settings) if counted else None
    peaks = {} if not counted else peaks if peaks is not None else probe_peaks(precisions_to_probe(entries, raws), settings.device)
    if counted and not peaks and not probes(settings.device):
        warnings = [*warnings, f"no \"of peak\": the matmul probe runs in torch, which has no device '{settings.device}' (OpenVINO's)"]

    ref_raw = raws[entries[0].name]
    if ref_raw["status"] == "ok":
        ref_raw["latency_s"] = _latency(ref_raw["latency_samples_s"])
    judge = choose_judge(settings.judge, settings.prompts)
    if judge is not None and not counted and judge[0] != "classical":
        # A vision-language model judge loads a model or asks a server per image: minutes, past any grace period.
        warnings = [*warnings, f"adherence was not judged for this partial report (the {judge[0]} judge asks a model about every "
                               "image), to write it quickly"]
        judge = None
    rows = []
    for e in entries:
        stage_flops = _stage_flops_or_none(e, entries[0], settings, flops) if counted else None
        try:
            rows.append(_summarise(e, raws[e.name], ref_raw, out, flops, peaks, judge, settings.prompts, stage_flops))
        except SdoptError as exc:
            if judge is None or judge[0] == "classical":
                raise
            # A vision-language model's server or folder failed after every artifact ran: keep the measurements, unjudged
            # from here on (the gate finds an adherence rule's numbers MISSING: cannot judge, never a pass), and say why.
            warnings = [*warnings, f"adherence was not judged from {e.name} on: {exc}"]
            print(f"sdopt bench: warning: {warnings[-1]}", file=sys.stderr)
            judge = None
            for sample in raws[e.name]["samples"]:
                sample.pop("adherence", None)
            rows.append(_summarise(e, raws[e.name], ref_raw, out, flops, peaks, None, settings.prompts, stage_flops))
    ref_fp = model_fingerprint(entries[0].manifest)
    machine = machine or fingerprint()
    mismatch = [w for w in [profile.mismatch(machine) if profile else None] if w]
    for w in mismatch:
        print(f"sdopt bench: warning: {w}", file=sys.stderr)
    warnings = [*mismatch, *_calibrated_on_the_measured_image(entries, settings), *_noisy(rows, settings.rounds or 1), *warnings]
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
            **({"eta": settings.eta} if settings.eta is not None else {}),
            "images_per_call": 1,
            # img2img / inpainting: the files every artifact started from (their names; the paths are the user's)
            **({"init_image": Path(settings.init_image).name, "mask_image": Path(settings.mask_image).name if settings.mask_image else None,
                "strength": settings.strength} if settings.init_image else {}),
        },
        "settings": {"warmup": settings.warmup, "runs": settings.runs, "rounds": settings.rounds, "max_seconds": settings.max_seconds, "device": settings.device,
                     "worker_start": effective_worker_start(settings.worker_start, settings.device)},
        "model": {"fingerprint": ref_fp, "identity": model_identity(entries[0]), "family": entries[0].manifest.family, **entries[0].manifest.model},
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
