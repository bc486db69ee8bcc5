"""Wall time of one tiny-model bench matrix: run locally (one artifact after another) vs `sdopt bench --ray`
on a local Ray cluster on the same machine, measured one after the other in one process.

    python measure/ray_matrix.py WORK [--cpus-per-job 1] [--out docs/measurements/ray_matrix.json]

WORK gets the tiny zoo model and its ONNX and OpenVINO exports (built once, reused). The Ray wall time
includes starting and stopping the local cluster, as a user's `sdopt bench --ray` would pay it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--cpus-per-job", type=float, default=1.0)
    parser.add_argument("--out", default="docs/measurements/ray_matrix.json")
    args = parser.parse_args()

    from sdopt.machine import fingerprint
    from sdopt.bench.profiles import HardwareProfile
    from sdopt.bench.artifacts import collect
    from sdopt.bench.runner import run_bench
    from sdopt.bench.settings import BenchSettings
    from sdopt.cluster.bench import ProfileRun, run_matrix
    from sdopt.export.run import export
    from sdopt.zoo import write_model

    work = Path(args.work)
    model = work / "tiny"
    if not (model / "sdopt.json").is_file():
        write_model("tiny", model)
    for target in ("onnx", "openvino"):
        if not (work / f"tiny-{target}" / "sdopt.json").is_file():
            export(model, target, work / f"tiny-{target}")
    artifacts = [f"{model}@bf16", str(work / "tiny-onnx"), str(work / "tiny-openvino")]
    settings = BenchSettings.resolve(None, prompts=["a lighthouse at dawn"], seeds=[0, 1], steps=4, height=64, width=64, warmup=1, runs=2)

    start = time.perf_counter()
    local = run_bench(artifacts, str(model), work / "local", settings, progress=False)
    local_s = time.perf_counter() - start

    profile = HardwareProfile(name="ray", description="one node kind: this machine", device="cpu", precisions=[], backends=[],
                              resources={"num_cpus": args.cpus_per_job})
    start = time.perf_counter()
    on_ray = run_matrix([ProfileRun(profile, collect(artifacts, str(model)), settings, work / "ray")], progress=False)["ray"]
    ray_s = time.perf_counter() - start

    def rows(report):
        return {a["name"]: {"status": a["status"], "latency_median_s": (a.get("latency_s") or {}).get("median"),
                            "load_s": a.get("load_s"), "psnr_db": (a.get("quality") or {}).get("psnr_db")} for a in report["artifacts"]}

    result = {
        "machine": fingerprint(),
        "matrix": ["tiny (reference)", *[Path(a).name for a in artifacts]],
        "settings": {"steps": settings.steps, "size": f"{settings.height}x{settings.width}", "seeds": settings.seeds,
                     "warmup": settings.warmup, "runs": settings.runs, "cpus_per_ray_job": args.cpus_per_job},
        "local_sequential_s": local_s,
        "ray_local_cluster_s": ray_s,
        "wall_ratio_local_over_ray": local_s / ray_s,
        "local_rows": rows(local),
        "ray_rows": rows(on_ray),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
