"""Where an OpenVINO artifact's time goes, kernel by kernel, and how far its stages are from the machine's ceiling (docs/optimize.md).

Each component (text encoder, UNet, VAE decoder) is read, reshaped to the static shapes one
image of SIZE² with guidance uses (text encoder and UNet batch 2, decoder batch 1), compiled
with the properties sdopt compiles it with (the artifact's precision, the latency hint) plus
OpenVINO's per-layer counters, and called ROUNDS times after a warm-up. For each kind of
kernel OpenVINO chose (layer type × the precision it ran in) it prints the time per call, its
share, and — for convolutions, transposed convolutions and fully-connected layers, whose
multiply-adds are counted from the runtime graph's shapes — the operations per second and
the fraction of the square-matmul peak probed here in that precision (sdopt.bench.flops).

The last lines are a bound: the component's time if every counted kernel ran at the probed
int8 peak and every other kernel (normalisations, element-wise subgraphs, reorders, attention
subgraphs) took no time at all. Nothing exact on this machine can beat it.

    .venv/bin/python measure/openvino_profile.py ARTIFACT [--size 256] [--rounds 4] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

COUNTED = ("Convolution", "Deconvolution", "FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul")


def macs(op) -> int | None:
    """Multiply-adds of one runtime-graph node from its shapes; None for kernels not counted here."""
    kind = op.get_rt_info()["layerType"].astype(str)
    if kind not in COUNTED:
        return None
    shapes = [op.input(i).get_partial_shape() for i in range(op.get_input_size())]
    if any(s.is_dynamic for s in shapes[:2]):
        return None
    x, w = [list(s.to_shape()) for s in shapes[:2]]
    out = list(op.output(0).get_partial_shape().to_shape())
    if kind == "Convolution":  # weights [Cout, Cin/g, kh, kw] or grouped [g, Cout/g, Cin/g, kh, kw]
        return math.prod(out) * math.prod(w[-3:])
    if kind == "Deconvolution":  # weights [Cin, Cout, kh, kw]: every input pixel spreads over kh*kw outputs
        return math.prod(x) * math.prod(w[1:])
    if kind.startswith("FullyConnected"):  # weights [N, K]
        return math.prod(out) * w[-1]
    # MatMul: out [.., M, N]; the first input is [.., M, K], or [.., K, M] when it is read transposed (the
    # channels-first attention's queries): its dimension that is not M is the reduced one.
    transposed = x[-1] == out[-2] and x[-2] != out[-2]
    return math.prod(out) * (x[-2] if transposed else x[-1])


def feeds_for(model, size: int, batch: int) -> dict:
    """Static shapes for one image: batch for N, 77 tokens, the latent at size/8; random values."""
    rng = np.random.default_rng(0)
    shapes, feeds = {}, {}
    for port in model.inputs:
        name, dims = port.get_any_name(), []
        for i, d in enumerate(port.get_partial_shape()):
            if d.is_static:
                dims.append(d.get_length())
            elif i == 0:
                dims.append(batch)
            elif name == "input_ids" or (name == "encoder_hidden_states" and i == 1):
                dims.append(77)
            else:
                dims.append(size // 8)
        shapes[port] = dims
        if name == "input_ids":
            feeds[name] = rng.integers(0, 1000, dims).astype(np.int64)
        else:
            feeds[name] = (rng.standard_normal(dims) * (500 if "time" in name else 1)).astype(np.float32)
    model.reshape({port: dims for port, dims in shapes.items() if dims})
    return feeds


def profile(core, xml: Path, precision: str, size: int, batch: int, rounds: int) -> dict:
    from sdopt.runtime.openvino import compile_config

    model = core.read_model(xml)
    feeds = feeds_for(model, size, batch)
    compiled = core.compile_model(model, "CPU", {**compile_config(precision), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feeds)  # warm-up: kernel selection, first-touch
    per_node: dict[str, list[float]] = defaultdict(list)
    walls = []
    for _ in range(rounds):
        start = time.perf_counter()
        request.infer(feeds)
        walls.append(time.perf_counter() - start)
        for p in request.profiling_info:
            per_node[p.node_name].append(p.real_time.total_seconds())
    kernels: dict[str, dict] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        seconds = statistics.median(per_node.get(op.get_friendly_name(), [0.0]))
        if not seconds:
            continue
        # The kernel's own name says what it computed in (brgconv_avx512_I8, brgemm_avx512_bf16): the layer's
        # runtimePrecision says u8 for a bf16 matmul over int8-compressed weights.
        computed = rt["primitiveType"].astype(str).rsplit("_", 1)[-1].lower()
        key = f"{rt['layerType'].astype(str)} ({computed})"
        k = kernels.setdefault(key, {"computed": computed, "ms": 0.0, "layers": 0, "counted_ms": 0.0, "gop": 0.0})
        k["ms"] += seconds * 1e3
        k["layers"] += 1
        count = macs(op)
        if count:
            k["counted_ms"] += seconds * 1e3
            k["gop"] += 2 * count / 1e9
    return {"wall_ms": statistics.median(walls) * 1e3, "layers_ms": sum(k["ms"] for k in kernels.values()), "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="an OpenVINO artifact folder (sdopt export --to openvino, sdopt quantize)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import openvino as ov

    from sdopt.bench.flops import matmul_peak_gflops
    from sdopt.hardware import cpu_flags
    from sdopt.manifest import read_manifest
    from sdopt.runtime.openvino import model_file

    artifact = Path(args.artifact)
    manifest = read_manifest(artifact)
    peaks = {p: matmul_peak_gflops(p, seconds=2.0)["gflops"] for p in ("int8", "bf16", "fp32")}
    core = ov.Core()
    result = {"artifact": str(artifact), "size": args.size, "rounds": args.rounds, "cpu_flags": sorted(cpu_flags()),
              "machine": platform.processor() or platform.machine(), "openvino": ov.__version__,
              "peaks_gops": {p: round(v, 1) for p, v in peaks.items()}, "components": {}}
    print("probed peaks (GOP/s): " + ", ".join(f"{p} {v:,.0f}" for p, v in peaks.items()))
    for name, batch in (("text_encoder", 2), ("unet", 2), ("vae_decoder", 1)):
        entry = manifest.components.get(name)
        if entry is None:
            continue
        xml = artifact / model_file(entry.files, name)
        precision = entry.precision or manifest.precision
        found = profile(core, xml, precision, args.size, batch, args.rounds)
        counted_gop = sum(k["gop"] for k in found["kernels"].values())
        found["bound_ms"] = counted_gop / peaks["int8"] * 1e3
        result["components"][name] = found
        print(f"\n{name} ({precision}, batch {batch}): {found['wall_ms']:.1f} ms per call, layers {found['layers_ms']:.1f} ms; "
              f"counted {counted_gop:.1f} GOP")
        for key, k in sorted(found["kernels"].items(), key=lambda kv: -kv[1]["ms"]):
            if k["ms"] < 0.005 * found["layers_ms"]:
                continue
            rate = ""
            if k["gop"]:
                gops = k["gop"] / (k["counted_ms"] / 1e3)
                probed = {"i8": "int8", "bf16": "bf16"}.get(k["computed"], "fp32")
                k["gops"], k["of_peak"] = round(gops, 1), round(gops / peaks[probed], 3)
                rate = f"  {gops:7.0f} GOP/s = {100 * gops / peaks[probed]:3.0f}% of {probed} peak"
            print(f"  {k['ms']:8.1f} ms {100 * k['ms'] / found['layers_ms']:5.1f}%  {k['layers']:4d} layers  {key:40s}{rate}")
        print(f"  bound: every counted kernel at the int8 peak, the rest free: {found['bound_ms']:.1f} ms "
              f"({found['wall_ms'] / found['bound_ms']:.2f}x below today's call)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
