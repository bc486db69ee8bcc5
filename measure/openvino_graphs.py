"""Two OpenVINO graphs of one component, compiled alike and timed side by side (docs/optimize.md).

Used to see whether sdopt's export and another's (Optimum Intel's) differ in speed at the
graph level, with the pipeline around them taken away: both IR files are read, reshaped to
the same static input shapes, compiled with the same properties, fed the same random inputs,
and called in interleaved rounds. Prints each graph's median call time and layer count.

    .venv/bin/python measure/openvino_graphs.py A/unet/openvino_model.xml B/unet/openvino_model.xml \\
        --shape sample=2,4,32,32 --shape timestep=1 --shape encoder_hidden_states=2,77,768 --hint bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", help="openvino_model.xml files")
    parser.add_argument("--shape", action="append", required=True, help="INPUT=D1,D2,... (repeatable; the same for every graph)")
    parser.add_argument("--hint", default="bf16", help="INFERENCE_PRECISION_HINT (bf16, f32)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    import openvino as ov

    core = ov.Core()
    shapes = {name: [int(d) for d in dims.split(",")] for name, _, dims in (s.partition("=") for s in args.shape)}
    rng = np.random.default_rng(0)
    requests, feeds = [], []
    for path in args.graphs:
        model = core.read_model(path)
        layers = len(model.get_ordered_ops())
        names = {p.get_any_name(): p for p in model.inputs}
        # An input given with another rank than the graph's (a scalar timestep here, [1] there) is left as the graph has it.
        model.reshape({names[n]: ov.PartialShape(s) for n, s in shapes.items()
                       if n in names and names[n].get_partial_shape().rank.get_length() == len(s)})
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": args.hint, "PERFORMANCE_HINT": "LATENCY"})
        feed = {}
        for port in compiled.inputs:
            dtype = {"f32": np.float32, "i64": np.int64, "i32": np.int32}.get(port.get_element_type().to_string(), np.float32)
            feed[port.get_any_name()] = (rng.standard_normal(list(port.get_shape())) * (500 if "time" in port.get_any_name() else 1)).astype(dtype)
        request = compiled.create_infer_request()
        request.infer(feed)  # warm-up
        requests.append((path, layers, request))
        feeds.append(feed)
    seconds = [[] for _ in requests]
    for _ in range(args.rounds):
        for i, (_, _, request) in enumerate(requests):
            start = time.perf_counter()
            request.infer(feeds[i])
            seconds[i].append(time.perf_counter() - start)
    base = statistics.median(seconds[0])
    for (path, layers, _), s in zip(requests, seconds):
        median = statistics.median(s)
        print(f"{median * 1000:8.1f} ms  x{median / base:.3f}  {layers:5d} ops  {path}")


if __name__ == "__main__":
    main()
