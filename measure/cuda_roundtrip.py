"""Every quantization row the capability table declares for a device, quantized, loaded and run there, in one process.

    python measure/cuda_roundtrip.py MODEL WORK [--device cuda]

For each supported (backend, scheme) row of --device that quantizes torch
artifacts: quantize MODEL for the device, load the artifact on it, generate
one image (4 steps, 128x128, seed 0), and compare with fp32 on the same
device (PSNR). torch fp16 and bf16 join the table on CUDA. One process keeps
this to about a minute on a GPU, where a process per row costs twenty
seconds of imports each: the fresh-process reload is what the CPU tests
(tests/test_quant.py) and `sdopt bench` show. Prints one line per row and a
JSON list at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

REQUEST = dict(prompt="a watercolor painting of a lighthouse at dawn", seed=0, steps=4, height=128, width=128, scheduler="euler")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quality import psnr_db
    from sdopt.quant import QUANTIZERS
    from sdopt.quant.run import quantize
    from sdopt.quant.schemes import table
    from sdopt.runtime.backends import device_kind

    def image(path, precision=None) -> tuple[np.ndarray, int]:
        pipe = sdopt.load(str(path), device=args.device, precision=precision)
        result = pipe.generate(GenerateRequest(**REQUEST))
        return np.asarray(result.images[0]), result.peak_memory_bytes

    reference, _ = image(args.model)
    results = []
    cases = [("torch", p) for p in (("fp16", "bf16") if args.device.startswith("cuda") else ("bf16",))]
    cases += [(r.backend, r.scheme) for r in table() if r.device == device_kind(args.device) and r.supported and QUANTIZERS[r.backend].accepts == "torch"]
    for backend, scheme in cases:
        start, row = time.perf_counter(), {"backend": backend, "scheme": scheme, "device": args.device}
        try:
            if backend == "torch":
                got, peak = image(args.model, precision=scheme)
            else:
                out = args.work / f"{backend}-{scheme}"
                shutil.rmtree(out, ignore_errors=True)
                quantize(args.model, scheme, out, backend=backend, device=args.device)
                got, peak = image(out)
            row.update(status="ok", psnr_db=round(psnr_db(reference, got), 2), peak_memory_bytes=peak)
        except Exception as exc:  # a row that fails is the finding: record it and go on
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-1500:])
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{backend:8} {scheme:13} {row['status']:6} PSNR {row.get('psnr_db', '-')} dB  {row['seconds']} s  {row.get('error', '')}", flush=True)
        results.append(row)
    print(json.dumps(results))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
