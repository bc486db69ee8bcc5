"""The time a generate call spends outside its models: the loop's own work (docs/optimize.md has none of it to spare).

Two figures per artifact and batch, 20 steps at --size, everything interleaved round by round (a slow spell of a
shared machine hits every row alike) and given as medians:

- share: the call's wall time against the sum of its component calls (GenerateResult.timings: text encoder,
  every UNet step, VAE decoder); the rest is the loop's (tokenizing, scheduler steps, numpy<->torch, checks,
  post-processing, the result).
- loop alone: the same call with every component replaced by a stub that returns that component's stored output,
  so what is left is the loop's work alone, without the models' noise (--stub-calls of each variant per round,
  alternating: a call takes milliseconds).

Each is measured twice in the same run, with make_scheduler as it is (a kept scheduler per name and config, copied
per call: sdopt.runtime.schedulers) and as it was (built by Diffusers' from_config every call), and the two results'
latents and images are compared: they must be equal to the bit (printed; the run fails otherwise). Every component
runs on --threads threads (torch.set_num_threads and the threads load option): on a shared 2-core machine torch's
default of 2 made the tiny UNet 12x slower (10 s for 20 steps instead of 0.7 s), which drowns what is measured here.

    .venv/bin/python measure/loop_overhead.py ARTIFACT... [--size 64] [--batches 1,4] [--rounds 7] [--stub-calls 10]
        [--threads 1] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def built_every_call(name, config):
    """make_scheduler before the kept copies: Diffusers' from_config each time."""
    from sdopt.runtime import schedulers

    schedulers.check_scheduler(name)
    return schedulers._build(name, config)


def use_make_scheduler(function) -> None:
    """The loop and the request checks import make_scheduler by name: swap it in both."""
    from sdopt.runtime import pipeline, request_checks

    pipeline.make_scheduler = request_checks.make_scheduler = function


class Stub:
    """A component that returns what the real one gave for the same input shapes (its first call)."""

    def __init__(self, component):
        self.component, self.outputs = component, {}
        self.output_names = getattr(component, "output_names", None)

    def __call__(self, **inputs):
        key = tuple((name, array.shape) for name, array in inputs.items())
        if key not in self.outputs:
            self.outputs[key] = self.component(**inputs)
        return self.outputs[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1,4", help="images per call, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stub-calls", type=int, default=10, help="calls of each variant per round with stubbed components (cheap)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    import sdopt
    from sdopt.machine import fingerprint
    from sdopt.runtime.schedulers import make_scheduler

    torch.set_num_threads(args.threads)
    variants = {"before": built_every_call, "after": make_scheduler}
    batches = [int(b) for b in args.batches.split(",")]
    real, stubbed = {}, {}
    for path in args.artifacts:
        real[path] = sdopt.load(path)
        if real[path].manifest.backend != "torch":  # torch's threads are the process's, set above
            real[path].close()
            real[path] = sdopt.load(path, threads=args.threads)
        stubbed[path] = sdopt.load(path, **({"threads": args.threads} if real[path].manifest.backend != "torch" else {}))
        stubbed[path].components = {name: Stub(c) for name, c in stubbed[path].components.items()}
    requests = {b: sdopt.GenerateRequest(prompt="a red circle above a blue square", seed=1, steps=args.steps,
                                         height=args.size, width=args.size, num_images=b) for b in batches}
    for pipes in (real, stubbed):  # warm-up: first calls allocate, pick kernels and fill the stubs
        for pipe in pipes.values():
            for request in requests.values():
                pipe.generate(request)

    runs: dict[tuple, list] = {}
    outputs: dict[tuple, tuple] = {}
    mismatches = []
    for _ in range(args.rounds):
        for path in args.artifacts:
            for b, request in requests.items():
                for kind, pipes in (("real", real), ("stubbed", stubbed)):
                    for variant, function in list(variants.items()) * (1 if kind == "real" else args.stub_calls):
                        use_make_scheduler(function)
                        start = time.perf_counter()
                        result = pipes[path].generate(request)
                        wall = time.perf_counter() - start
                        t = result.timings
                        components = t.text_encoder + t.vae_encoder + t.unet_total + t.vae_decoder
                        runs.setdefault((path, b, kind, variant), []).append((wall, components))
                        arrays = (result.latents, np.stack([np.asarray(im) for im in result.images]))
                        other = outputs.setdefault((path, b, kind), arrays)
                        if not all(np.array_equal(x, y) for x, y in zip(arrays, other)):
                            mismatches.append(f"{path} batch {b} {kind} {variant}")
    use_make_scheduler(make_scheduler)

    rows = []
    for path in args.artifacts:
        for b in batches:
            row = {"artifact": path, "backend": real[path].manifest.backend, "batch": b}
            for variant in variants:
                walls = runs[(path, b, "real", variant)]
                wall = statistics.median(w for w, _ in walls)
                outside = statistics.median(w - c for w, c in walls)
                alone = statistics.median(w for w, _ in runs[(path, b, "stubbed", variant)])
                row[variant] = {"wall_ms": round(wall * 1e3, 2), "components_ms": round(statistics.median(c for _, c in walls) * 1e3, 2),
                                "outside_ms": round(outside * 1e3, 2), "outside_share": round(outside / wall, 4),
                                "loop_alone_ms": round(alone * 1e3, 2)}
            rows.append(row)
            before, after = row["before"], row["after"]
            print(f"{path.rstrip('/').rsplit('/', 1)[-1]:<14} batch {b}  wall {before['wall_ms']:8.1f} -> {after['wall_ms']:8.1f} ms  "
                  f"outside {before['outside_ms']:5.1f} ({before['outside_share']:5.1%}) -> {after['outside_ms']:5.1f} ms "
                  f"({after['outside_share']:5.1%})  loop alone {before['loop_alone_ms']:5.2f} -> {after['loop_alone_ms']:5.2f} ms")
    cpu = fingerprint()["cpu"]
    print(f"machine: {cpu.get('model')}, {cpu.get('usable_cores')} cores; {args.threads} thread(s); {args.rounds} rounds")
    print("images and latents bit-identical before/after" if not mismatches else f"DIFFERENT: {mismatches}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "cpu": cpu,
                       "bit_identical": not mismatches, "rows": rows}, f, indent=2)
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
