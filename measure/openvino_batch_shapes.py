"""Truncated guidance's memory cost: one OpenVINO UNet compiled as static batch 2 + static batch 1 (what a static
artifact does once guidance ends), or once with a bounded dynamic batch 1..2. Prints the compile time, the median of
5 calls per batch (interleaved) and the process's peak RSS. One mode per process:

    python measure/openvino_batch_shapes.py static|dynamic UNET.xml      # an sd15 UNet at 256x256 (latents 32x32)
"""
import resource, sys, time
import numpy as np, openvino as ov

if sys.argv[1:2] in (["-h"], ["--help"]):
    print(__doc__)
    sys.exit(0)
if len(sys.argv) != 3 or sys.argv[1] not in ("static", "dynamic"):
    sys.exit("usage: python measure/openvino_batch_shapes.py static|dynamic UNET.xml")
mode, xml = sys.argv[1], sys.argv[2]
core = ov.Core()
cfg = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}

def shapes(batch):
    m = core.read_model(xml)
    d = {}
    for p in m.inputs:
        ps = p.get_partial_shape()
        name = p.get_any_name()
        dims = [ps[i] for i in range(ps.rank.get_length())]
        if name.startswith("sample"): dims = [batch, 4, 32, 32]
        elif name.startswith("encoder_hidden"): dims = [batch, 77, 768]
        elif name.startswith("timestep"): dims = [d if d.is_static else 1 for d in dims] if dims else []
        d[name] = ov.PartialShape(dims)
    m.reshape(d)
    return m

def feed(model, b):
    out = {}
    for p in model.inputs:
        n = p.get_any_name()
        if n.startswith("sample"): out[n] = np.random.rand(b, 4, 32, 32).astype(np.float32)
        elif n.startswith("encoder_hidden"): out[n] = np.random.rand(b, 77, 768).astype(np.float32)
        else: out[n] = np.array([500] if p.get_partial_shape().rank.get_length() else 500, dtype=np.int64 if 'i64' in str(p.get_element_type()) else np.float32)
    return out

t = time.perf_counter()
if mode == "static":
    compiled = {2: core.compile_model(shapes(2), "CPU", cfg), 1: core.compile_model(shapes(1), "CPU", cfg)}
else:
    c = core.compile_model(shapes(ov.Dimension(1, 2)), "CPU", cfg)
    compiled = {2: c, 1: c}
print(mode, "compile s", round(time.perf_counter() - t, 1))
reqs = {b: compiled[b].create_infer_request() for b in (2, 1)}
for b in (2, 1):
    f = feed(compiled[b], b)
    reqs[b].infer(f)
times = {2: [], 1: []}
for _ in range(5):
    for b in (2, 1):
        f = feed(compiled[b], b)
        t = time.perf_counter(); reqs[b].infer(f); times[b].append(time.perf_counter() - t)
print(mode, {b: round(1000 * float(np.median(v)), 1) for b, v in times.items()}, "ms; peak RSS MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
