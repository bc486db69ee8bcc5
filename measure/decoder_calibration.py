"""Does an int8-static VAE decoder hold on every scheduler's latents? Calibrated on one scheduler, or across several.

The decoder sees the final latents, and their scale depends on the scheduler (on the sd15 zoo model at
4 steps, Euler's are ~3.6x PNDM's). This script records the decoder's inputs while an OpenVINO artifact
generates — calibration prompts and separate validation prompts, under each scheduler — then quantizes
the decoder with sdopt's own int8-static recipe (``sdopt.quant.nncf._quantize_static``) calibrated on:

- ``checkpoint only``: every calibration prompt under the checkpoint's scheduler (sdopt before 2026-12-03);
- ``sdopt``: what ``sdopt quantize`` records now (``calibration_runs``): those, and every prompt again under
  the next of ``DECODER_SCHEDULERS``;
- ``all``: every calibration prompt under every scheduler here;
- ``--calibration-schedulers NAME``: what ``sdopt quantize --calibration-schedulers NAME`` records: every
  prompt under NAME alone (DPM++ 2M, DDIM here);
- ``checkpoint and dpmpp_2m``: the checkpoint's runs and DPM++ 2M's — what that option recorded at first;
- ``sdopt, min-max ranges``: sdopt's samples with NNCF's MINMAX activation range estimator (the largest
  value seen, not the mean over samples of each one's min and max: the small PNDM latents then cannot
  pull the ranges down) — a candidate for the decoder's recipe, not what sdopt does.

and prints each variant's worst PSNR against the float decoder (OpenVINO f32) on each scheduler's
validation latents, with the decoder call's median time (docs/optimize.md, "Calibrating across schedulers").

    .venv/bin/python measure/decoder_calibration.py /work/runs/sd15-work2/openvino-bf16 --size 256 \\
        --out docs/measurements/decoder_calibration_sd15.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

SCHEDULERS = (None, "euler", "dpmpp_2m", "ddim", "euler_a")
VALIDATION_PROMPTS = ("a red car parked by the sea", "a forest path in autumn", "a plate of pasta with basil", "a robot reading a book")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="an OpenVINO artifact with a float VAE decoder")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    import sdopt
    from sdopt import GenerateRequest
    from sdopt.machine import fingerprint
    from sdopt.runtime.openvino import model_file
    from sdopt.quant.calibration import CALIBRATION_PROMPTS, Recorder, calibration_runs
    from sdopt.quant.nncf import _quantize_static

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = sdopt.load(args.artifact, verify=False)
    entry = pipe.manifest.components["vae_decoder"]
    decoder_xml = Path(args.artifact) / model_file(entry.files, "vae_decoder")
    recorder = Recorder(pipe.components["vae_decoder"])
    pipe.components["vae_decoder"] = recorder
    latents: dict[tuple[str, str | None], list[np.ndarray]] = {}
    for scheduler in SCHEDULERS:
        for split, prompts in (("calibration", CALIBRATION_PROMPTS), ("validation", VALIDATION_PROMPTS)):
            recorder.samples = []
            for seed, prompt in enumerate(prompts):
                pipe.generate(GenerateRequest(prompt=prompt, seed=seed, steps=args.steps, height=args.size, width=args.size, scheduler=scheduler))
            latents[split, scheduler] = [s["latent_sample"] for s in recorder.samples]
            stack = np.stack(latents[split, scheduler])
            print(f"{split:<11} {scheduler or 'checkpoint':<10} latent std {stack.std():7.2f}  |max| {np.abs(stack).max():7.2f}", flush=True)
    pipe.close()

    core = ov.Core()
    shape = list(latents["validation", None][0].shape)

    def read():
        model = core.read_model(decoder_xml)
        model.reshape({0: shape})
        return model

    def decode(model, hint: str):
        request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        outputs = {s: [request.infer({0: x})[0].copy() for x in latents["validation", s]] for s in SCHEDULERS}
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            request.infer({0: latents["validation", None][0]})
            seconds.append(time.perf_counter() - start)
        return outputs, statistics.median(seconds)

    def worst_psnr(images, references) -> float:
        def unit(x):
            return np.clip(x / 2 + 0.5, 0, 1)

        return float(min(10 * np.log10(1 / np.mean((unit(a) - unit(b)) ** 2)) for a, b in zip(images, references)))

    reference, _ = decode(read(), "f32")
    sdopt_runs = [latents["calibration", scheduler][seed] for seed, _, scheduler in calibration_runs(CALIBRATION_PROMPTS, ["vae_decoder"])]
    minmax = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    variants = {  # name: (calibration latents, NNCF's advanced parameters); no latents: the float decoder
        "bf16, not quantized": (None, None),
        "checkpoint only": (latents["calibration", None], None),
        "sdopt": (sdopt_runs, None),
        "all": ([x for s in SCHEDULERS for x in latents["calibration", s]], None),
        "sdopt, min-max ranges": (sdopt_runs, minmax),
    }
    for chosen in ("dpmpp_2m", "ddim"):  # `sdopt quantize --calibration-schedulers NAME`: a user who generates with one scheduler
        runs = calibration_runs(CALIBRATION_PROMPTS, ["vae_decoder"], (chosen,))
        variants[f"--calibration-schedulers {chosen}"] = ([latents["calibration", s][seed] for seed, _, s in runs], None)
    # The option's first version recorded the checkpoint's runs too: their small latents pulled the ranges down.
    variants["checkpoint and dpmpp_2m"] = (latents["calibration", None] + latents["calibration", "dpmpp_2m"], None)
    rows = []
    for name, (samples, advanced) in variants.items():
        model = read() if samples is None else _quantize_static(nncf, read(), [{"latent_sample": x} for x in samples], advanced)[0]
        outputs, seconds = decode(model, "bf16")
        psnr = {s or "checkpoint": round(worst_psnr(outputs[s], reference[s]), 1) for s in SCHEDULERS}
        rows.append({"calibration": name, "samples": 0 if samples is None else len(samples), "decoder_ms": round(seconds * 1000, 1), "worst_psnr_db": psnr})
        print(f"{name:<20} {seconds * 1000:6.0f} ms  " + "  ".join(f"{k} {v:5.1f}" for k, v in psnr.items()), flush=True)
    cpu = fingerprint()["cpu"]
    print(f"machine: {cpu.get('model')}, {cpu.get('usable_cores')} cores, {' '.join(cpu.get('isa', []))}")
    if args.out:
        stats = {f"{split}/{s or 'checkpoint'}": {"std": round(float(np.stack(v).std()), 2), "abs_max": round(float(np.abs(np.stack(v)).max()), 2)}
                 for (split, s), v in latents.items()}
        with open(args.out, "w") as f:
            json.dump({"artifact": str(args.artifact), "size": args.size, "steps": args.steps, "calibration_runs": [s or "checkpoint" for _, _, s in calibration_runs(CALIBRATION_PROMPTS, ["vae_decoder"])],
                       "latents": stats, "rows": rows, "cpu": cpu}, f, indent=2)


if __name__ == "__main__":
    main()
