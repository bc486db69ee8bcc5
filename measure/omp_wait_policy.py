"""What OpenMP's wait policy and thread count do to torch's generate on a quiet and on a busy CPU (docs/optimize.md,
"Threads").

torch's CPU wheels run their parallel regions on GNU OpenMP (libgomp), whose idle threads spin before they sleep.
Where other work holds the cores, a spinning thread takes the core the working one needs, and each op waits out a
scheduler slice: the tiny model's 20 steps took 7.5-18.8 s instead of 0.4-1.4 s on this project's 2-core machine
while other jobs ran. OMP_WAIT_POLICY=PASSIVE (sleep at once) or fewer threads avoid it, and cost speed on a quiet
machine; this script measures both sides, so the docs' advice rests on figures.

Each row is one model run in a fresh process (OpenMP reads its variables once, when torch loads it) with torch's
default threads (every core) under each --policies entry ("default": OMP_WAIT_POLICY, GOMP_SPINCOUNT and
OMP_NUM_THREADS all unset; else NAME=VALUE[+NAME=VALUE]), with --busy processes spinning on the side (0: quiet):
every combination interleaved round by round so a slow spell hits all alike, given as medians of the per-round
medians.

    .venv/bin/python measure/omp_wait_policy.py MODEL... [--steps 20] [--size 64] [--busy 0,1] [--rounds 3]
        [--policies default,OMP_WAIT_POLICY=PASSIVE] [--calls 3] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys

POLICIES = ("default", "OMP_WAIT_POLICY=PASSIVE")

CHILD = """
import json, sys, time
import sdopt
path, steps, size, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pipe = sdopt.load(path)
request = sdopt.GenerateRequest(prompt="a red circle above a blue square", seed=1, steps=steps, height=size, width=size)
pipe.generate(request)  # warm-up
walls = []
for _ in range(calls):
    start = time.perf_counter()
    pipe.generate(request)
    walls.append(time.perf_counter() - start)
import torch
print(json.dumps({"walls": walls, "threads": torch.get_num_threads()}))
"""


def spin(stop) -> None:
    while not stop.is_set():
        pass


def run_child(model: str, policy: str, args) -> dict:
    env = dict(os.environ)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        env.pop(name, None)
    if policy != "default":
        for assignment in policy.split("+"):
            name, _, value = assignment.partition("=")
            env[name] = value
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(args.steps), str(args.size), str(args.calls)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model or artifact folders (torch backend)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--busy", default="0,1", help="spinning side processes per condition, comma-separated (default 0,1)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated: 'default' (neither variable set) or NAME=VALUE[+NAME=VALUE], e.g. GOMP_SPINCOUNT=10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="timed generate calls per process after one warm-up")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from sdopt.hardware import cpu_flags
    from sdopt.machine import fingerprint

    machine = fingerprint()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    busy_levels = [int(b) for b in args.busy.split(",")]
    policies = args.policies.split(",")
    runs: dict[tuple, list[float]] = {}
    loads = []
    for round_index in range(args.rounds):
        for busy in busy_levels:
            stop = multiprocessing.Event()
            spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(busy)]
            for p in spinners:
                p.start()
            try:
                for model in args.models:
                    for policy in policies:
                        result = run_child(model, policy, args)
                        runs.setdefault((model, busy, policy), []).append(statistics.median(result["walls"]))
                        print(f"round {round_index + 1} busy {busy} {policy} {os.path.basename(model.rstrip('/'))}: "
                              f"{' '.join(f'{w:.2f}' for w in result['walls'])} s ({result['threads']} threads)", flush=True)
            finally:
                stop.set()
                for p in spinners:
                    p.join()
            loads.append(os.getloadavg()[0])
    print(f"\nmachine: {machine['cpu'].get('model')}, {machine['cpu'].get('usable_cores')} cores, {', '.join(flags)}; "
          f"load average 1 min at the conditions' ends {min(loads):.1f}-{max(loads):.1f}; "
          f"{args.steps} steps at {args.size}x{args.size}, medians of {args.rounds} rounds")
    rows = []
    for model in args.models:
        for busy in busy_levels:
            first = statistics.median(runs[(model, busy, policies[0])])
            for policy in policies:
                median = statistics.median(runs[(model, busy, policy)])
                rows.append({"model": model, "busy_processes": busy, "policy": policy, "median_s": median,
                             f"speedup_over_{policies[0]}": first / median})
                print(f"{os.path.basename(model.rstrip('/')):>12}  busy {busy}  {policy:<40} {median:6.2f} s  "
                      f"{first / median:5.2f}x {policies[0]}'s speed")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "cpu_flags": flags, "steps": args.steps, "size": args.size, "rounds": args.rounds,
                       "load_average_1min": loads, "rows": rows,
                       "runs": [{"model": m, "busy_processes": b, "policy": p, "medians_s": v} for (m, b, p), v in runs.items()]},
                      f, indent=1)


if __name__ == "__main__":
    main()
