"""One artifact's measurements, in a process of its own.

The runner starts one worker per artifact and round, so each one's load is the
artifact's first and its peak memory is its own, not the sum of the artifacts
before it. Usage: python -m sdopt.bench.worker JOB.json RESULT.json (a fresh
interpreter), or forked from a fork server that has imported the backend
(bench/forkserver.py calls ``main``).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np


PROGRESS_FILE = "progress"  # what the worker is doing, one line, for the bench's progress bar (runner.watch_progress)


def say(out_dir: Path, text: str) -> None:
    """Tell the bench what this worker is doing: the line replaces the last one whole (a reader never sees half)."""
    partial = out_dir / f".{PROGRESS_FILE}.partial"
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out_dir / PROGRESS_FILE)
    except OSError:
        pass  # a progress line is for the eye: never a reason to fail a measurement


def _generate_all(pipe, job: dict, images: dict, done=None) -> list[tuple[dict, object]]:
    """Every prompt and seed of ``job`` once; ``images``: the request's image fields (sdopt.request.image_options);
    ``done()`` is called after each image (between timed generates, never inside one)."""
    from sdopt import GenerateRequest

    outputs = []
    for p, prompt in enumerate(job["prompts"]):
        for seed in job["seeds"]:
            request = GenerateRequest(
                prompt=prompt,
                seed=seed,
                steps=job["steps"],
                guidance_scale=job["guidance_scale"],
                height=job["height"],
                width=job["width"],
                scheduler=job["scheduler"],
                eta=job.get("eta"),
                **(job.get("request_options") or {}),  # e.g. guidance_end (PATH+guidance-end=F)
                **images,
            )
            outputs.append(({"prompt_index": p, "seed": seed}, pipe.generate(request)))
            if done is not None:
                done()
    return outputs


def measure(job: dict) -> dict:
    import sdopt
    from sdopt.bench import contention
    from sdopt.request import image_options
    from sdopt.runtime.compiled import compiled_graphs
    from sdopt.runtime.memory import rss_peak_bytes, rss_peak_measured

    out_dir = Path(job["output_dir"])
    say(out_dir, "loading")
    images = image_options(job.get("init_image"), job.get("mask_image"), job.get("strength"))  # read once, not timed
    start = time.perf_counter()
    options = {"run_settings": job["run_settings"]} if job.get("run_settings") else {}
    options.update(job.get("load_options") or {})  # e.g. compile (PATH+compile=MODE)
    pipe = sdopt.load(job["path"], device=job["device"], precision=job.get("precision"), **options)
    load_s = time.perf_counter() - start
    # Each generate resets the RSS high-water mark (runtime/memory.py): the load's own peak is read now or never.
    rss_peaks = [rss_peak_bytes()]

    budget = job.get("max_seconds")
    say(out_dir, f"loaded in {load_s:.1f} s, warming up")
    warm_job = {**job, "prompts": job["prompts"][:1], "seeds": job["seeds"][:1]}
    start, counters = time.perf_counter(), contention.sample()
    first = _generate_all(pipe, warm_job, images)
    first_generate_s = time.perf_counter() - start
    rss_peaks += [r.memory["rss"] for _, r in first]
    others_share = contention.others_share(counters, contention.sample())
    warmups = 1  # the first generate above is the first warm-up
    # Where one generate takes longer than the whole budget (emulated bf16 on a CPU without it:
    # the sd15 VAE decoder alone runs for half an hour), warming up again buys nothing, and when
    # the first generate already covered every prompt and seed it is the measured pass: a second
    # would double the artifact's cost to refine first-call effects of well under 1%.
    first_counts = budget is not None and first_generate_s >= budget and len(first) == len(job["prompts"]) * len(job["seeds"])
    while warmups < job["warmup"] and (budget is None or time.perf_counter() - start < budget):
        say(out_dir, f"warm-up {warmups + 1}/{job['warmup']}")
        rss_peaks += [r.memory["rss"] for _, r in _generate_all(pipe, warm_job, images)]
        warmups += 1

    graphs_warm = compiled_graphs()  # torch.compile: what the warm-up compiled; more below is a recompile
    if first_counts:
        calls, runs = list(first), 1
    else:
        images_due, measured = job["runs"] * len(job["prompts"]) * len(job["seeds"]), itertools.count(1)
        say(out_dir, f"0/{images_due} images measured")
        calls, runs, start, counters = [], 0, time.perf_counter(), contention.sample()
        while runs < job["runs"]:
            calls.extend(_generate_all(pipe, job, images, done=lambda: say(out_dir, f"{next(measured)}/{images_due} images measured")))
            runs += 1
            if budget is not None and time.perf_counter() - start >= budget:
                break  # at least one full run: every prompt and seed has its image for the quality check
        others_share = contention.others_share(counters, contention.sample())
    del first

    # Images and latents of the last run: the same prompts and seeds give the same output every run.
    last = calls[-len(job["prompts"]) * len(job["seeds"]):]
    samples = []
    for key, result in last:
        stem = f"p{key['prompt_index']}-s{key['seed']}"
        result.images[0].save(out_dir / f"{stem}.png")
        np.save(out_dir / f"{stem}.npy", result.latents)
        # What the pipeline found broken that the saved files cannot show (NaN pixels from the decoder are black in the PNG)
        samples.append({**key, "image": f"{stem}.png", "latents": f"{stem}.npy", **({"problems": result.problems} if result.problems else {})})

    totals = [r.timings.total for _, r in calls]
    steps = [s for _, r in calls for s in r.timings.unet_steps]
    # The process's peak RSS from the load on (the load's, every generate's), read before anything below asks the
    # backend more (computes walks the runtime graph).
    process_peak = max(rss_peak_bytes(), *rss_peaks, *(r.memory["rss"] for _, r in calls))
    peak = max(r.peak_memory_bytes for _, r in calls)
    kind = calls[0][1].peak_memory_kind
    if not rss_peak_measured():  # Windows: the 0s read above are no measurement; a report of "0 MiB" passed the gate's memory rule
        process_peak, peak = None, peak if kind == "cuda_allocated" else None
    return {
        "status": "ok",
        "artifact_id": pipe.manifest.artifact_id,  # what it loaded (runner._run_worker: the artifact the report names?)
        "backend": pipe.manifest.backend,
        "precision": pipe.precision,
        # What the UNet's compute runs in, where the backend can say (OpenVINO asks the compiled
        # model: a bf16 artifact runs fp32 on a CPU without bf16); else the artifact's precision.
        "compute_precision": getattr(pipe.components.get("unet"), "runs", None) or pipe.precision,
        # The same per component, for the per-stage ceilings (int8 UNet beside a bf16 decoder).
        "runs_by_component": {name: getattr(c, "runs", None) for name, c in pipe.components.items()},
        # What each component's convolutions and matmuls ran in (OpenVINO: "int8" also for int8 weights whose
        # activations the runtime quantizes itself); None where the backend cannot say.
        "computes_by_component": {name: getattr(c, "computes", None) for name, c in pipe.components.items()},
        "run_settings": pipe.run_settings(),
        "load_s": load_s,
        "first_generate_s": first_generate_s,
        "runs": runs,
        "warmups": warmups,
        "first_generate_counted": first_counts,  # the first generate is the one measured pass
        **({"compiled": {"setting": options["compile"], "graphs_after_warmup": graphs_warm, "recompiles_measured": (compiled_graphs() or 0) - (graphs_warm or 0)}}
           if options.get("compile") else {}),
        "latency_samples_s": totals,
        # What other processes took of this worker's CPUs while those samples were timed (bench/contention.py)
        "others_cpu_share": others_share,
        "text_encoder_samples_s": [r.timings.text_encoder for _, r in calls],
        "unet_step_samples_s": steps,
        "unet_calls_per_generate": len(calls[0][1].timings.unet_steps),
        "vae_decoder_samples_s": [r.timings.vae_decoder for _, r in calls],
        "vae_encoder_samples_s": [r.timings.vae_encoder for _, r in calls],  # img2img and inpainting: the init image encoded
        "unet_total_samples_s": [r.timings.unet_total for _, r in calls],
        "unet_total_median_s": statistics.median(r.timings.unet_total for _, r in calls),
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "process_peak_rss_bytes": process_peak,
        "samples": samples,
    }


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = measure(job)
    except Exception as exc:  # the runner records the error and goes on with the next artifact
        from sdopt.errors import SdoptError

        message = str(exc) if isinstance(exc, SdoptError) else f"{type(exc).__name__}: {exc}"
        result = {"status": "failed", "error": message, "traceback": None if isinstance(exc, SdoptError) else traceback.format_exc()}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
