"""sdopt's OpenVINO artifacts against Optimum Intel's OVStableDiffusionPipeline, in one run (issue 16, docs/optimize.md).

Every engine makes the same images (prompts, seed 0, Euler, 4 steps, guidance 7.5, 256x256,
batch 1) in its own process, one after another: load, one warm-up image per prompt, then
``--runs`` timed passes over the prompts. The whole sequence runs twice, the second time in
reverse order, so a slow spell of a shared machine does not land on one engine alone; the
figure per engine is the median of its timed images over both sequences. ``--interleave``
loads every engine at once instead and times one image of each in turn, round after round:
the steadier ratios, for the memory of all engines together.

Engines:
- ``torch-fp32``: sdopt's torch backend on the Diffusers folder (the reference);
- ``sdopt:NAME=PATH``: any sdopt artifact (``--sdopt bf16=... --sdopt best=...``);
- ``optimum-default`` / ``optimum-bf16``: Optimum Intel's pipeline exported from the same
  folder (``OVStableDiffusionPipeline.from_pretrained(export=True)``, kept in --work),
  reshaped to the static 256x256 shape (Optimum's own advice for CPU), with its default
  ov_config and with ``INFERENCE_PRECISION_HINT=bf16``. It runs in ``--optimum-python``:
  Optimum Intel pins optimum and transformers, so it lives in a venv of its own.

Optimum's pipeline draws its initial noise from the same torch generator as sdopt, so each
engine's first image is also compared with the torch-fp32 one (PSNR): a check that the engines
compute the same thing, not a quality ranking.

    .venv/bin/python measure/optimum_intel_sd15.py --model /work/runs/sd15 \\
        --sdopt bf16=/work/runs/sd15-work/openvino-bf16 --sdopt best=/work/runs/sd15-work/openvino-bf16-int8-static-all \\
        --optimum-python /work/optvenv/bin/python --work /work/runs/optimum --out reports/cpu-avx512bf16/sd15-optimum
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["a watercolor painting of a lighthouse at dawn", "a photo of a red fox in fresh snow, telephoto"]
SEED, STEPS, SIZE, GUIDANCE = 0, 4, 256, 7.5


# --- workers (each engine in its own process) -------------------------------------------
def _sdopt_worker(path: str, runs: int, image: Path) -> dict:
    import sdopt
    from sdopt import GenerateRequest

    start = time.perf_counter()
    pipe = sdopt.load(path)
    load_s = time.perf_counter() - start

    def make(prompt: str):
        return pipe.generate(GenerateRequest(prompt=prompt, seed=SEED, steps=STEPS, height=SIZE, width=SIZE,
                                             guidance_scale=GUIDANCE, scheduler="euler")).images[0]

    return _timed(make, runs, image, load_s, {"backend": pipe.manifest.backend, "precision": pipe.precision})


def _optimum_worker(model: str, export: Path, mode: str, runs: int, image: Path) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    config = {} if mode == "default" else {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[mode]}
    start = time.perf_counter()
    if (export / "model_index.json").is_file():
        pipe = OVStableDiffusionPipeline.from_pretrained(export, ov_config=config, compile=False)
        export_s = None
    else:
        pipe = OVStableDiffusionPipeline.from_pretrained(model, export=True, ov_config=config, compile=False)
        pipe.save_pretrained(export)
        export_s = time.perf_counter() - start
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.reshape(batch_size=1, height=SIZE, width=SIZE, num_images_per_prompt=1)
    pipe.compile()
    load_s = time.perf_counter() - start

    def make(prompt: str):
        return pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]

    facts = {"export_s": export_s, "ov_config": config, "unet_runs": _optimum_precision(pipe),
             "weights_mb": round(sum(f.stat().st_size for f in export.rglob("*.bin")) / 2**20)}
    return _timed(make, runs, image, load_s, facts)


def _optimum_precision(pipe) -> str:
    """What Optimum's compiled UNet runs, asked of the compiled model (attribute names differ across versions)."""
    unet = getattr(pipe, "unet", None)
    for attr in ("request", "compiled_model"):
        compiled = getattr(unet, attr, None)
        compiled = getattr(compiled, "get_compiled_model", lambda: compiled)()
        try:
            value = compiled.get_property("INFERENCE_PRECISION_HINT")
            return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:  # noqa: BLE001 - best effort, reported as unknown
            continue
    return "unknown"


def _timed(make, runs: int, image: Path, load_s: float, facts: dict) -> dict:
    for i, prompt in enumerate(PROMPTS):  # warm-up: one image per prompt; the first is kept for the PSNR check
        picture = make(prompt)
        if i == 0:
            picture.save(image)
    if runs < 0:  # --interleave: the parent asks for one image at a time (a prompt's index per line) and reads its seconds
        print(json.dumps({"ready": True, "load_s": load_s, **facts}), flush=True)
        for line in sys.stdin:
            start = time.perf_counter()
            make(PROMPTS[int(line)])
            print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
        return {"seconds": [], "load_s": load_s, **facts}
    seconds = []
    for _ in range(runs):
        for prompt in PROMPTS:
            start = time.perf_counter()
            make(prompt)
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "load_s": load_s, **facts}


# --- the parent: run the engines, twice, and write the table -----------------------------
def _psnr(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    from sdopt.bench.assemble import PSNR_CAP_DB
    from sdopt.quality import psnr_db  # the parent runs in sdopt's venv

    return min(psnr_db(*(np.asarray(Image.open(p).convert("RGB")) for p in (a, b))), PSNR_CAP_DB)  # identical: capped, as in the bench


def _run_worker(python: str, args: list[str]) -> dict:
    done = subprocess.run([python, __file__, "--worker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the sd15 zoo Diffusers folder")
    parser.add_argument("--sdopt", action="append", default=[], help="NAME=PATH of an sdopt artifact (repeatable)")
    parser.add_argument("--optimum-python", help="python of a venv with optimum-intel[openvino] and diffusers")
    parser.add_argument("--work", help="where Optimum's export is kept (reused when there)")
    parser.add_argument("--out", help="folder for optimum.json, optimum.md and the first images")
    parser.add_argument("--runs", type=int, default=2, help="timed passes over the prompts per engine and sequence")
    parser.add_argument("--interleave", action="store_true",
                        help="load every engine at once and time one image of each in turn (needs their memory together)")
    parser.add_argument("--skip-optimum-bf16", action="store_true", help="leave out Optimum with the bf16 hint (its default runs bf16 on a CPU with it)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, name, target, runs, image = args.worker
        result = (_optimum_worker(args.model, Path(target), name, int(runs), Path(image)) if kind == "optimum"
                  else _sdopt_worker(target, int(runs), Path(image)))
        print(json.dumps(result))
        return
    if not (args.optimum_python and args.work and args.out):
        parser.error("--optimum-python, --work and --out are required")

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    engines = [("torch-fp32", sys.executable, ["sdopt", "torch-fp32", args.model])]
    for spec in args.sdopt:
        name, _, path = spec.partition("=")
        engines.append((f"sdopt-{name}", sys.executable, ["sdopt", name, path]))
    export = str(work / "optimum-openvino")
    engines.append(("optimum-default", args.optimum_python, ["optimum", "default", export]))
    if not args.skip_optimum_bf16:
        engines.append(("optimum-bf16", args.optimum_python, ["optimum", "bf16", export]))
    # Optimum's export first, untimed, so neither sequence carries it.
    if not (Path(export) / "model_index.json").is_file():
        print("exporting with Optimum Intel ...", flush=True)
        first = _run_worker(args.optimum_python, ["optimum", "default", export, "0", str(out / "optimum-export.png"), "--model", args.model])
        print(f"  Optimum export {first['export_s']:.0f} s", flush=True)
    results = _interleaved(engines, args, out) if args.interleave else _in_sequences(engines, args, out)
    _write(results, args, out)


def _in_sequences(engines: list, args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Each engine in its own process, one after another; the whole sequence twice, the second reversed."""
    results: dict[str, dict] = {}
    for sequence, order in enumerate((engines, engines[::-1])):
        for name, python, worker in order:
            print(f"sequence {sequence + 1}: {name} ...", flush=True)
            r = _run_worker(python, [*worker, str(args.runs), str(out / f"{name}.png"), "--model", args.model])
            print(f"  median {statistics.median(r['seconds']):.2f} s over {len(r['seconds'])} images (load {r['load_s']:.0f} s)", flush=True)
            kept = results.setdefault(name, {**r, "seconds": []})
            kept["seconds"] += r["seconds"]
    return results


def _interleaved(engines: list, args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Every engine loaded at once, each in its own process, and asked for one image at a time in turn: round r
    times one image of every engine (the order rotating), so a slow spell of a shared machine lands on all alike.
    Needs the memory of every engine together. A pause between images lets the last engine's threads go idle."""
    procs = {}
    for name, python, worker in engines:
        procs[name] = subprocess.Popen([python, __file__, "--worker", *worker, "-1", str(out / f"{name}.png"), "--model", args.model],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        print(f"loading {name} ...", flush=True)
    results = {}
    for name, proc in procs.items():
        results[name] = {**_reply(proc, name), "seconds": []}
        results[name].pop("ready", None)
    names = list(procs)
    rounds = args.runs * 2 * len(PROMPTS)  # as many images per engine as the two sequences time
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(0.5)
            procs[name].stdin.write(f"{r % len(PROMPTS)}\n")
            results[name]["seconds"].append(_reply(procs[name], name)["seconds"])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {results[n]['seconds'][-1]:.2f} s" for n in names), flush=True)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    return results


def _reply(proc: subprocess.Popen, name: str) -> dict:
    """The worker's next JSON line (a library may print other lines to stdout)."""
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"worker {name} ended early (its stderr is above)")


def _write(results: dict[str, dict], args: argparse.Namespace, out: Path) -> None:
    reference = statistics.median(results["torch-fp32"]["seconds"])
    rows = []
    for name, r in results.items():
        median = statistics.median(r["seconds"])
        rows.append({"engine": name, "median_s": round(median, 3), "speedup_vs_torch_fp32": round(reference / median, 2),
                     "psnr_vs_torch_fp32_db": round(_psnr(out / f"{name}.png", out / "torch-fp32.png"), 1),
                     "images_timed": len(r["seconds"]), **{k: v for k, v in r.items() if k not in ("seconds", "load_s")}})
    from sdopt.machine import fingerprint  # the parent runs in sdopt's venv

    summary = {"settings": {"prompts": PROMPTS, "seed": SEED, "steps": STEPS, "size": SIZE, "guidance": GUIDANCE, "runs": args.runs,
                            "order": "interleaved image by image" if args.interleave else "two sequences, the second reversed"},
               "machine": fingerprint(), "rows": rows}
    by = {r["engine"]: r["median_s"] for r in rows}
    for name in by:
        if name.startswith("sdopt-"):
            summary[f"{name}_vs_optimum_default"] = round(by["optimum-default"] / by[name], 2)
            if "optimum-bf16" in by:
                summary[f"{name}_vs_optimum_bf16"] = round(by["optimum-bf16"] / by[name], 2)
    (out / "optimum.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| engine | median s | vs torch fp32 | vs Optimum default | PSNR vs torch fp32 (dB) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['median_s']:.2f} | {r['speedup_vs_torch_fp32']:.2f}x | "
                     f"{by['optimum-default'] / r['median_s']:.2f}x | {r['psnr_vs_torch_fp32_db']:.1f} |")
    (out / "optimum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
