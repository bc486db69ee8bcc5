"""Load on `sdopt serve` over loopback: N requests from C concurrent clients, once per --max-batch.

    python measure/serve_load.py [--artifact DIR] [--requests 500] [--clients 32] [--batches 1,8] \
        [--size 64] [--steps 4] [--time-limit 600] [--out docs/measurements/serve_load.json]

For each max-batch value it starts `sdopt serve` in its own process (so the
clients do not share its interpreter), fires the requests at
/sdapi/v1/txt2img with a distinct seed and force_task_id each, and checks
that every request got exactly one answer: its own image (the task id and
seed in `info` match) or an explicit 429 / 504. Then throughput (images per
second over the run's wall time), p50/p99 latency, the batch sizes the server
formed (from /metrics), and the ratio between the max-batch values, all from
one run, with the machine's CPU and ISA features. Bounded: the script stops a
server run at --time-limit and reports what did not come back as lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_server(artifact: str, port: int, max_batch: int, max_queue: int) -> subprocess.Popen:
    sdopt = Path(sys.executable).with_name("sdopt")
    cmd = [str(sdopt), "serve", artifact, "--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--name", "load"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_healthy(client, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if (await client.get(url + "/health")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not come up")


async def one_run(artifact: str, max_batch: int, args) -> dict:
    import httpx
    from PIL import Image

    port = 20000 + os.getpid() % 10000 + max_batch
    proc = start_server(artifact, port, max_batch, args.max_queue)
    url = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    results: dict[str, dict] = {}
    try:
        async with httpx.AsyncClient(limits=limits, timeout=args.time_limit) as client:
            await wait_healthy(client, url, proc)
            # One request first, not counted: the first generate call pays one-time costs (kernel setup).
            await client.post(url + "/sdapi/v1/txt2img", json={"prompt": "warm up", "width": args.size, "height": args.size, "steps": args.steps})
            todo: asyncio.Queue = asyncio.Queue()
            for i in range(args.requests):
                todo.put_nowait(i)

            async def client_loop():
                while True:
                    try:
                        i = todo.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    task = f"load-{max_batch}-{i}"
                    body = {"prompt": f"a red circle number {i}", "seed": 1000 + i, "width": args.size, "height": args.size,
                            "steps": args.steps, "force_task_id": task}
                    start = time.perf_counter()
                    try:
                        r = await client.post(url + "/sdapi/v1/txt2img", json=body)
                        entry = {"status": r.status_code, "seconds": time.perf_counter() - start}
                        if r.status_code == 200:
                            data = r.json()
                            info = json.loads(data["info"])
                            entry["task_id"], entry["seeds"] = info["task_id"], info["all_seeds"]
                            entry["images"] = len(data["images"])
                            Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).load()
                    except Exception as exc:  # counted as lost: no explicit answer came back
                        entry = {"status": None, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
                    if task in results:
                        entry["duplicate"] = True
                    results[task] = entry

            begin = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client_loop() for _ in range(args.clients))), timeout=args.time_limit)
            wall = time.perf_counter() - begin
            metrics = (await client.get(url + "/metrics")).text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return summarize(max_batch, args, results, wall, metrics)


def summarize(max_batch: int, args, results: dict, wall: float, metrics: str) -> dict:
    ok = [r for r in results.values() if r["status"] == 200]
    wrong = [t for t, r in results.items() if r["status"] == 200 and (r["task_id"] != t or r["seeds"] != [1000 + int(t.rsplit("-", 1)[1])] or r["images"] != 1)]
    latencies = sorted(r["seconds"] for r in ok)

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

    batch_count = float(re.search(r"^sdopt_batch_images_count (\S+)", metrics, re.M).group(1))
    batch_sum = float(re.search(r"^sdopt_batch_images_sum (\S+)", metrics, re.M).group(1))
    return {
        "max_batch": max_batch,
        "requests": args.requests,
        "answered": len(results),
        "ok": len(ok),
        "rejected_429": sum(r["status"] == 429 for r in results.values()),
        "timed_out_504": sum(r["status"] == 504 for r in results.values()),
        "other_status": sorted({r["status"] for r in results.values()} - {200, 429, 504}, key=str),
        "lost": args.requests - len(results) + sum(r["status"] is None for r in results.values()),
        "duplicated": sum(bool(r.get("duplicate")) for r in results.values()),
        "wrong_image": len(wrong),
        "wall_s": wall,
        "images_per_s": len(ok) / wall,
        "latency_p50_s": pct(0.50),
        "latency_p99_s": pct(0.99),
        "mean_batch_images": batch_sum / batch_count if batch_count else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None, help="default: the tiny zoo model, written to a temporary folder")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=600, help="seconds per server run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from sdopt.machine import fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact
        if artifact is None:
            from sdopt.zoo import write_model

            artifact = str(write_model("tiny", Path(tmp) / "tiny", seed=0, progress=False))
        runs = [asyncio.run(one_run(artifact, int(b), args)) for b in args.batches.split(",")]
    machine = fingerprint()
    cpu = machine.get("cpu", {})
    report = {"date": time.strftime("%Y-%m-%d"), "artifact": args.artifact or "tiny zoo model (seed 0)",
              "size": args.size, "steps": args.steps, "clients": args.clients, "machine": {"cpu": cpu}, "runs": runs}
    if len(runs) >= 2:
        report["throughput_ratio"] = runs[-1]["images_per_s"] / runs[0]["images_per_s"]
    print(f"CPU: {cpu.get('model')}, {cpu.get('usable_cores', cpu.get('logical_cores'))} cores, ISA {', '.join(cpu.get('isa', []))}")
    print("| max batch | ok | 429 | 504 | lost | duplicated | wrong image | images/s | p50 s | p99 s | mean batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['max_batch']} | {r['ok']} | {r['rejected_429']} | {r['timed_out_504']} | {r['lost']} | {r['duplicated']} | "
              f"{r['wrong_image']} | {r['images_per_s']:.2f} | {r['latency_p50_s']:.2f} | {r['latency_p99_s']:.2f} | {r['mean_batch_images']:.2f} |")
    if "throughput_ratio" in report:
        print(f"throughput, max batch {runs[-1]['max_batch']} / max batch {runs[0]['max_batch']}: {report['throughput_ratio']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    bad = any(r["lost"] or r["duplicated"] or r["wrong_image"] or r["other_status"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
