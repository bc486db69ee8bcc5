"""Writing a bench report: report.json, results.csv (pandas), report.md and report.html."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdopt.errors import require


def require_report_libraries() -> None:
    """The bench extra's libraries that write_reports needs (pandas: results.csv; matplotlib: report.html's plots),
    checked before a bench runs: missing, they failed with a traceback once every artifact had been measured."""
    require("pandas", "bench")
    require("matplotlib", "bench")


def _budget_note(r: dict, planned: int, warmup: int) -> str:
    if r.get("first_generate_counted"):
        return (f"**{r['artifact']}**: its first generate outlasted the budget and is its one measured run "
                f"(latency includes first-call costs; no further warm-up)")
    note = f"**{r['artifact']}** ran {r['runs']} of {planned} runs"
    return note + (f" after {r['warmups']} of {warmup} warm-ups" if (r["warmups"] or warmup) < warmup else "")


def quantization_label(artifact: dict) -> str | None:
    """What an artifact's components were quantized to, e.g. "int8 (torchao) weights"; None when none were."""
    from sdopt.manifest import quantization_label as label

    return label(artifact.get("quantization"))


def precision_label(row: dict) -> str:
    """A table row's precision: what it runs in, and what its components were quantized to."""
    return row["precision"] + (f", {row['quantization']}" if row.get("quantization") else "")


def flat_rows(report: dict) -> list[dict[str, Any]]:
    """One flat row per artifact: the CSV's and the Markdown table's data."""
    rows = []
    for a in report["artifacts"]:
        lat, st, q, c = a.get("latency_s", {}), a.get("stages_s", {}), a.get("quality", {}), a.get("compute", {})
        rows.append(
            {
                "artifact": a["name"],
                "backend": a["backend"],
                "precision": a["precision"],
                "quantization": quantization_label(a),
                "replaced": "; ".join(f"{n} by {r['by']}" for n, r in (a.get("replaced") or {}).items()) or None,
                "cache_interval": a.get("cache_interval"),
                "guidance_end": a.get("guidance_end"),
                "status": a["status"],
                "error": a.get("error"),
                "latency_median_s": lat.get("median"),
                "latency_p90_s": lat.get("p90"),
                "latency_rel_mad": lat.get("rel_mad"),
                "others_cpu_share": lat.get("others_cpu_share"),  # of the CPUs the bench ran on, while it was timed
                "speedup_vs_reference": (1 / a["latency_ratio_to_reference"]) if a.get("latency_ratio_to_reference") else None,
                "text_encoder_s": st.get("text_encoder"),
                "unet_step_s": st.get("unet_step"),
                "vae_decoder_s": st.get("vae_decoder"),
                "vae_encoder_s": st.get("vae_encoder"),  # img2img and inpainting only
                "unet_per_image_s": st.get("unet_total"),
                "other_s": st.get("other"),
                "steps_per_s": a.get("steps_per_s"),
                "load_s": a.get("load_s"),
                "first_generate_s": a.get("first_generate_s"),
                "runs": a.get("runs"),
                "warmups": a.get("warmups"),
                "first_generate_counted": a.get("first_generate_counted"),
                "peak_memory_bytes": a.get("peak_memory_bytes"),
                "size_bytes": a.get("size_bytes"),
                "psnr_db": q.get("psnr_db"),
                "ssim": q.get("ssim"),
                "adherence": (a.get("adherence") or {}).get("mean"),
                "max_abs_pixel_error": q.get("max_abs_pixel_error"),
                "latent_cosine": q.get("latent_cosine"),
                "achieved_gflops": c.get("achieved_gflops"),
                "fraction_of_peak": c.get("fraction_of_peak"),
                **{f"{stage}_gflops": (a.get("stage_compute") or {}).get(stage, {}).get("achieved_gflops") for stage in ("text_encoder", "vae_decoder")},
                "node": (a.get("node") or {}).get("hostname"),  # where a Ray run placed it (sdopt.cluster.bench); empty locally
            }
        )
    return rows


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "ms":  # under 0.05 ms, one significant digit: a GPU's 0.03 ms text encoder read "0.0"
        return f"{value * 1000:.1g}" if 0 < value * 1000 < 0.05 else f"{value * 1000:,.1f}"
    if kind == "mib":  # a decimal below 100 MiB: the toys' 5.8 and 6.5 MiB both read "6"
        mib = value / 2**20
        return f"{mib:,.1f}" if mib < 100 else f"{mib:,.0f}"
    if kind == "x":
        return f"{value:.2f}×"
    if kind == "pct":  # under 1%, one significant digit: the tiny torchao int8 UNet's 0.43% of peak read "0%"
        return f"{value * 100:.1g}%" if 0 < value * 100 < 1 else f"{value * 100:.0f}%"
    if isinstance(value, float):
        text = f"{value:.4g}"
        if float(text) in (0.0, 1.0) and value != float(text):  # an SSIM of 0.99999997 read "1", as identical images did
            text = f"{value:.8g}"
        return text
    return str(value)


def vae_encodes(rows: list[dict]) -> bool:
    """Whether a row ran the VAE encoder (img2img, inpainting): its time gets a column of its own in the tables, where
    it was in none, and the stage columns fell short of the latency by the whole encode (the tiny reference's 463 ms)."""
    return any(r["vae_encoder_s"] is not None for r in rows)


def table_header(encodes: bool) -> list[str]:
    """The results table's columns, in report.md and report.html alike."""
    return ["artifact", "backend", "precision", "status", "latency median (ms)", "p90 (ms)", "speed-up", "text enc (ms)", "UNet step (ms)",
            *(["VAE enc (ms)"] if encodes else []), "VAE dec (ms)", "peak mem (MiB)", "size (MiB)", "PSNR (dB)", "SSIM", "adherence",
            "latent cos", "GFLOP/s", "of peak"]


_STAGE_NAMES = {"text_encoder": "text encoder", "unet_step": "UNet", "vae_decoder": "VAE decoder"}


def _stage_note(stage: str, c: dict) -> str:
    probed = f" of {c['precision_probed']}" if c.get("precision_probed") else ""
    peak = f" ({_fmt(c['fraction_of_peak'], 'pct')}{probed})" if c.get("fraction_of_peak") is not None else ""
    return f"{_STAGE_NAMES.get(stage, stage)} {c['achieved_gflops']:,.1f}{peak}"


def changes_computation(artifact: dict) -> bool:
    """Whether a bench row's artifact runs a lever that changes what is computed (judged by adherence, not PSNR alone)."""
    return bool(artifact.get("replaced") or (artifact.get("cache_interval") or 1) > 1 or artifact.get("guidance_end"))


def _lever_note(artifact: dict, steps: int) -> str:
    from sdopt.stepcache.schedule import shallow_count

    parts = []
    interval = artifact.get("cache_interval") or 1
    end = artifact.get("guidance_end")
    if end:
        from sdopt.runtime.guidance import guided_steps

        parts.append(f"guidance for the first {guided_steps(steps, end)} of {steps} steps (guidance_end {end:g}), the conditional pass alone after")
    if interval > 1:
        parts.append(f"step-feature caching, the whole UNet every {interval} steps ({shallow_count(steps, interval)} of {steps} steps shallow; "
                     "its UNet step is the mean over both kinds)")
    for name, r in (artifact.get("replaced") or {}).items():
        psnr = (r.get("quality") or {}).get("psnr_db")
        size = f", {r['parameters']:,} parameters" if r.get("parameters") else ""
        parts.append(f"{name} by {r['by']}{size}" + (f" ({psnr:.1f} dB vs the full one on the decoder probe)" if psnr is not None else ""))
    return ", ".join(parts)


def _cluster_note(report: dict) -> str:
    """Where a Ray run placed the jobs: which node ran each artifact, and what each job asked for."""
    c = report["cluster"]
    where = "; ".join(f"{a['name']} on {(a.get('node') or {}).get('hostname', '?')}" for a in report["artifacts"] if a.get("node"))
    asked = ", ".join(f"{k}={v}" for k, v in (c.get("task_options") or {}).items())
    return f"- ran on Ray {c.get('ray_version')} ({len(c.get('nodes', []))} node(s) in the cluster); each job asked for {asked}: {where or 'no job ran'}"


def _eta_note(req: dict) -> str:
    return f" (eta {req['eta']:g})" if req.get("eta") is not None else ""


def _image_note(req: dict) -> str:
    """img2img or inpainting requests: on what, and how much of the schedule ran."""
    if not req.get("init_image"):
        return ""
    what = f"inpainting {req['init_image']} under the mask {req['mask_image']}" if req.get("mask_image") else f"img2img on {req['init_image']}"
    strength = "the default strength" if req.get("strength") is None else f"strength {req['strength']}"
    return f", {what} at {strength}"


def figure_cells(r: dict, encodes: bool) -> list[str]:
    """A results row's figures, from its latency to its share of peak, under table_header's columns: report.md and
    report.html alike (each table had its own copy)."""
    return [_fmt(r["latency_median_s"], "ms"), _fmt(r["latency_p90_s"], "ms"), _fmt(r["speedup_vs_reference"], "x"),
            _fmt(r["text_encoder_s"], "ms"), _fmt(r["unet_step_s"], "ms"),
            *([_fmt(r["vae_encoder_s"], "ms")] if encodes else []), _fmt(r["vae_decoder_s"], "ms"),
            _fmt(r["peak_memory_bytes"], "mib"), _fmt(r["size_bytes"], "mib"),
            _fmt(r["psnr_db"]), _fmt(r["ssim"]), _fmt(r["adherence"]), _fmt(r["latent_cosine"]),
            _fmt(r["achieved_gflops"]), _fmt(r["fraction_of_peak"], "pct")]


def _warmup_note(report: dict) -> str:
    """The warm-ups before the measured runs. A worker's first generate (one prompt and seed) always warms up, so
    --warmup 0 ran one, which the report's line said was 0."""
    asked = report["settings"]["warmup"]
    ran = max((a.get("warmups") or 0 for a in report["artifacts"] if a.get("status") == "ok"), default=0)
    if ran > asked:
        return f"{ran} warm-up(s) (--warmup {asked}: a worker's first generate, of one prompt and seed, always warms up)"
    return f"{asked} warm-up(s)"


def _workers_note(worker_start: str) -> str:
    if worker_start == "fork":
        return ("- workers: a process per artifact and round, forked from one that imported its backend "
                "(load time is the artifact's own, without the imports)")
    return "- workers: a fresh interpreter per artifact and round (load time includes importing the backend)"


def _caps_note(cpu: dict) -> str:
    """The variables that kept the libraries below this CPU's features, said next to them: such a run is not this CPU's."""
    caps = cpu.get("isa_caps") or {}
    if not caps:
        return ""
    # capped at SSE41, no recorded feature is left before it: no empty "; ;"
    return f"{'; ' if cpu.get('isa') else ''}capped by {' '.join(f'{k}={v}' for k, v in caps.items())}"


def markdown(report: dict) -> str:
    req, machine = report["request"], report["machine"]
    cpu = machine.get("cpu", {})
    gpus = ", ".join(g["name"] for g in machine.get("gpus", [])) or "none"
    rows = flat_rows(report)
    encodes = vae_encodes(rows)
    header = table_header(encodes)
    lines = [
        f"# sdopt bench report{' — profile ' + report['profile'] if report.get('profile') else ''}",
        "",
        f"- machine: {cpu.get('model')} ({cpu.get('usable_cores', cpu.get('logical_cores'))} cores; {' '.join(cpu.get('isa', []))}{_caps_note(cpu)}); GPUs: {gpus}",
        f"- software: sdopt {report['sdopt_version']} (commit {str(machine.get('git_commit'))[:12]}), "
        + ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items()),
        f"- request: {len(req['prompts'])} prompt(s) × seeds {req['seeds']}, {req['steps']} steps, {req['height']}×{req['width']}, "
        f"guidance {req['guidance_scale']}, scheduler {req['scheduler']}{_eta_note(req)}{_image_note(req)}; {report['settings']['runs']} run(s) after {_warmup_note(report)}"
        + (f", in each of {report['settings']['rounds']} rounds (every artifact once per round, the order rotating)" if (report["settings"].get("rounds") or 1) > 1 else ""),
        *([_workers_note(report["settings"]["worker_start"])] if report["settings"].get("worker_start") else []),
        f"- reference: **{report['reference']}**; UNet {_fmt((report.get('unet_flops_per_call') or 0) / 1e9)} GFLOP per call",
        f"- created {report['created']}",
        *([_cluster_note(report)] if report.get("cluster") else []),
        *[f"- **warning**: {w}" for w in report.get("warnings", [])],
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|---|---|" + "---:|" * (len(header) - 4),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                _cell(c) for c in [
                    r["artifact"], r["backend"], precision_label(r),
                    r["status"] if r["status"] == "ok" else f"**{r['status']}**", *figure_cells(r, encodes),
                ]
            )
            + " |"
        )
    changed = [r for r in report["artifacts"] if changes_computation(r)]
    if changed:
        lines += ["", "Levers that change what is computed (by design, so judge them by adherence, not PSNR alone): "
                  + "; ".join(f"**{r['name']}**: {_lever_note(r, req['steps'])}" for r in changed) + "."]
    planned, warmup = report["settings"]["runs"], report["settings"]["warmup"]

    def was_cut(r: dict) -> bool:
        return r["status"] == "ok" and ((r["runs"] or planned) < planned or (r["warmups"] or warmup) < warmup)

    cut = [r for r in flat_rows(report) if was_cut(r)]
    if cut:
        lines += ["", f"Time budget ({_fmt(report['settings'].get('max_seconds'))} s per artifact): "
                  + "; ".join(_budget_note(r, planned, warmup) for r in cut) + "."]
    failed = [r for r in flat_rows(report) if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- **{r['artifact']}**: {r['error']}" for r in failed]
    # Every quality column is the worst image's: said of PSNR alone, SSIM and latent cos read as means.
    lines += ["", "Speed-up is the reference's median latency over the artifact's, measured in this run. PSNR, SSIM and latent cos "
              "are each the worst over the prompts and seeds (PSNR capped at 100 dB for identical images; SSIM of the luma, "
              "averaged over the whole image, its borders included)."]
    judges = {a["adherence"]["judge"] for a in report["artifacts"] if a.get("adherence")}
    if judges:
        lines += ["", f"Adherence is the grounding judge's score ({', '.join(sorted(judges))}): the fraction of each prompt's colour, shape and position checks an image passes, averaged over the images (docs/judges.md). It needs no reference."]
    else:
        lines += ["", "Adherence was not measured (–): the grounding judge reads only prompts of the shapes model's form, 'a red circle on "
                  "the left [and a blue square on the right]' (--judge auto, the default, turns it on for those; docs/judges.md)."]
    staged = [a for a in report["artifacts"] if a.get("stage_compute")]
    if staged:
        lines += ["", "Per stage, GFLOP/s achieved (and of the probed peak in the precision that ran):", ""]
        lines += [f"- {a['name']}: " + " · ".join(_stage_note(stage, c) for stage, c in a["stage_compute"].items()) for a in staged]
    configured = [a for a in report["artifacts"] if a.get("run_settings")]
    if configured:
        lines += ["", "Run settings, as each backend reports them after loading (a profile's [run] tables set them):", ""]
        lines += [f"- {a['name']}: {_run_note(a['run_settings'])}" for a in configured]
    compiled = [a for a in report["artifacts"] if a.get("compiled")]
    if compiled:
        lines += ["", "torch.compile (compilation happens in the first generate, at each new shape):", ""]
        lines += [f"- {a['name']}: {a['compiled']['setting']}; first generate {a['first_generate_s']:.1f} s (compilation included) "
                  f"vs {a['latency_s']['median']:.2f} s median; {a['compiled']['graphs_after_warmup']} graphs compiled, "
                  f"{a['compiled']['recompiles_measured']} recompiles during the measured runs" for a in compiled]
    lines += ["", "GFLOP/s is the UNet's counted FLOPs over its measured step time (per stage: that stage's FLOPs over its time); \"of peak\" divides it by the best square-matmul rate probed on this machine in the precision that stage computed in (int8 where its convolutions and matmuls ran int8: activations quantized by the artifact, or by the runtime for int8 weights)."]
    peaks = report.get("matmul_peak_gflops") or {}
    if peaks:
        lines += ["Probed peaks: " + "; ".join(
            f"{ran} → {p['precision_probed']} {p['gflops']:,.1f} {'GOP/s' if p['precision_probed'] == 'int8' else 'GFLOP/s'} at {p['size']}²"
            + (f" ({p['kernel']})" if p.get("kernel") else "") + (f" — {p['note']}" if p.get("note") else "")
            for ran, p in peaks.items()) + "."]
    if any((r["fraction_of_peak"] or 0) > 1 for r in flat_rows(report)):
        lines += ["Above 100%, the model's kernels (e.g. oneDNN convolutions) beat the probed matmul — or the probe ran while the "
                  "machine was busy (on a shared 2-core host, one probe read 89 GFLOP/s where an idle one read 208): the probe is no "
                  "ceiling there; bench again on an idle machine to tell which."]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A Markdown table cell: a "|" in it (an artifact folder's name) ended the cell, shifting every column after it."""
    return text.replace("|", "\\|")


def _run_note(settings: dict[str, dict]) -> str:
    """One line per artifact: the settings every component shares, then what differs per component."""
    shared = {k: v for k, v in next(iter(settings.values())).items() if all(c.get(k) == v for c in settings.values())}
    parts = [", ".join(f"{k}={v}" for k, v in shared.items())]
    for name, component in settings.items():
        rest = {k: v for k, v in component.items() if k not in shared}
        if rest:
            parts.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    return "; ".join(p for p in parts if p)


def write_reports(report: dict, out: Path) -> dict[str, Path]:
    """Every report file, each rendered in full before any is written, then written beside itself and renamed into
    place, report.json last: an interrupt while writing never leaves a half-written file, nor a report.json (what
    sdopt gate and sdopt optimize read) without the files it describes."""
    require_report_libraries()
    import pandas as pd

    from sdopt.bench.html import render_html
    from sdopt.outputs import replace_file

    paths = {
        "html": out / "report.html",
        "md": out / "report.md",
        "csv": out / "results.csv",
        "json": out / "report.json",
    }
    texts = {
        "html": render_html(report, out),
        "md": markdown(report),
        # Each value as report.json has it: inferred, a column with a failed row's empty cell turned float, and a peak of
        # 558366720 bytes read "558366720.0", 1 run "1.0".
        "csv": pd.DataFrame(flat_rows(report), dtype=object).to_csv(index=False),
        "json": json.dumps(report, indent=2) + "\n",
    }
    temps = {kind: path.with_name(f".{path.name}.tmp-{os.getpid()}") for kind, path in paths.items()}
    try:
        for kind, temp in temps.items():
            temp.write_text(texts[kind], encoding="utf-8")  # whatever the locale: the texts hold × and —
        for kind, temp in temps.items():
            replace_file(temp, paths[kind])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return paths
