"""How ONNX Runtime int8-static's activation ranges are taken from the calibration samples, and what each rule costs in
image quality: one calibration, every rule measured (sdopt.quant.onnxruntime.AVERAGED_RANGES chose from these).

1. The inputs sdopt's int8-static calibrates on are recorded once from an fp32 ONNX artifact (the UNet's and the VAE
   decoder's, sdopt.quant.calibration.record_inputs), and the artifact's own images at the bench's request (the
   reference: ONNX Runtime fp32 measured 87 dB against torch fp32 on sd15).
2. Each sample's min and max of every Conv/MatMul input and output (ORT's MinMax augmentation, one sample at a time).
3. Each recipe: ranges from those (``global``: the extremes over all samples, ORT's MinMax; ``mean``: each sample's
   extremes averaged, ORT's CalibMovingAverage and NNCF's MEAN_MINMAX; ``qNN``: the NN-th percentile of the samples'
   extremes), optionally ``+GROUP`` layers kept float (GROUPS), given to ORT's quantize_static as its calibration cache
   (quantize_static's own arguments otherwise as sdopt's, recipe_arguments; a VAE decoder as exported: the engine
   turns its upsample rewrite back first, sdopt.quant.undo_upsample, which this does not); the quantized graph replaces the component in a copy of
   ``--base`` (an int8 artifact of the same export, hard-linked), which generates the bench's request; worst and mean
   PSNR against the reference and the latents' cosine.

    .venv/bin/python measure/ort_int8_ranges.py SOURCE_ONNX_ARTIFACT --base INT8_ARTIFACT --work DIR \\
        --component unet --recipes global,mean,mean+conv1 [--json OUT.json]

Steps 1 and 2 are kept in --work and reused. sd15 (2-core Zen 4): recording 14 min, the UNet's statistics 6 min, each
recipe ~2.5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = ("a watercolor painting of a lighthouse at dawn", "a photo of a red fox in fresh snow, telephoto")  # the bench's
SEEDS = (0, 1)
REQUEST = dict(steps=4, height=256, width=256, guidance_scale=7.5, scheduler="euler")
GROUPS = {"xkv": ("attn2/to_k/", "attn2/to_v/"), "ff2": ("/ff/net.2/",), "ff0": ("/ff/net.0/",), "proj": ("/proj_in/", "/proj_out/"),
          "out": ("/to_out.0/",), "short": ("conv_shortcut",), "conv1": ("/conv1/",), "conv2": ("/conv2/",)}


def record(source: Path, work: Path) -> None:
    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quant.calibration import CALIBRATION_PROMPTS, record_inputs

    if not (work / "calibration.pkl").exists():
        samples = record_inputs(source, CALIBRATION_PROMPTS, ["unet", "vae_decoder"])
        (work / "calibration.pkl").write_bytes(pickle.dumps(samples, protocol=5))
    if not (work / "reference.pkl").exists():
        pipe = sdopt.load(source, verify=False)
        reference = {(p, s): (np.asarray((r := pipe.generate(GenerateRequest(prompt=p, seed=s, **REQUEST))).images[0]), r.latents)
                     for p in PROMPTS for s in SEEDS}
        pipe.close()
        (work / "reference.pkl").write_bytes(pickle.dumps(reference))


def statistics(source: Path, work: Path, name: str) -> dict[str, np.ndarray]:
    """{tensor_ReduceMin / tensor_ReduceMax: one value per calibration sample}."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    from sdopt.quant.onnxruntime import graph_facts

    path = work / f"statistics-{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    graph = source / name / "model.onnx"
    samples = pickle.loads((work / "calibration.pkl").read_bytes())[name]
    dtypes, _, _ = graph_facts(graph)
    stats: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        calibrator = MinMaxCalibrater(graph, ["Conv", "MatMul", "Gemm"], augmented_model_path=f"{tmp}/augmented.onnx", use_external_data_format=True)
        calibrator.augment_graph()
        calibrator.create_inference_session()
        outputs = [o.name for o in calibrator.infer_session.get_outputs()]
        for sample in samples:
            values = calibrator.infer_session.run(None, {k: np.asarray(v).astype(dtypes[k]) for k, v in sample.items() if k in dtypes})
            for output, value in zip(outputs, values):
                if output.endswith(("_ReduceMin", "_ReduceMax")):
                    stats.setdefault(output, []).append(float(value.reshape(-1)[0]))
    arrays = {k: np.array(v, np.float32) for k, v in stats.items()}
    path.write_bytes(pickle.dumps(arrays))
    return arrays


def ranges(stats: dict[str, np.ndarray], rule: str):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    out = {}
    for key, low in stats.items():
        if not key.endswith("_ReduceMin"):
            continue
        tensor = key[: -len("_ReduceMin")]
        high = stats[tensor + "_ReduceMax"]
        if rule == "global":
            pair = (low.min(), high.max())
        elif rule == "mean":
            pair = (low.mean(), high.mean())
        elif rule.startswith("q"):
            q = float(rule[1:]) / 100
            pair = (np.quantile(low, 1 - q), np.quantile(high, q))
        else:
            raise SystemExit(f"unknown range rule {rule!r}: global, mean or qNN")
        out[tensor] = (np.float32(pair[0]), np.float32(pair[1]))
    return TensorsData(CalibrationMethod.MinMax, out)


def quantized_copy(source: Path, base: Path, work: Path, name: str, recipe: str, stats) -> tuple[Path, int]:
    import onnx
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from sdopt.export.onnx import save_graph
    from sdopt.quant.onnxruntime import OP_TYPES, graph_facts, recipe_arguments

    rule, *groups = recipe.split("+")
    graph = source / name / "model.onnx"
    _, kept, _ = graph_facts(graph)
    patterns = [p for g in groups for p in GROUPS[g]]
    model = onnx.load(str(graph), load_external_data=False)
    excluded = [n.name for n in model.graph.node if n.op_type in OP_TYPES and any(p in n.name for p in patterns)]
    del model
    artifact = work / f"artifact-{name}-{recipe}"
    shutil.rmtree(artifact, ignore_errors=True)
    shutil.copytree(base, artifact, copy_function=os.link)
    cache = work / f"ranges-{name}-{rule}.json"
    save_tensors_data(ranges(stats, rule), cache)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        quantize_static(str(graph), f"{tmp}/model.onnx", None, calibration_cache_path=str(cache), **recipe_arguments(False, kept + excluded))
        quantized = onnx.load(f"{tmp}/model.onnx", load_external_data=True)
    target = artifact / name / "model.onnx"
    for old in target.parent.glob("model.onnx*"):
        old.unlink()  # hard links: the base keeps its files
    save_graph(quantized, target)
    return artifact, len(excluded)


def evaluate(artifact: Path, reference) -> dict[str, float]:
    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quality import psnr_db

    pipe = sdopt.load(artifact, verify=False)  # the manifest's hashes are the base's
    psnr, cosine = [], []
    for (prompt, seed), (image, latents) in reference.items():
        result = pipe.generate(GenerateRequest(prompt=prompt, seed=seed, **REQUEST))
        psnr.append(psnr_db(image, np.asarray(result.images[0])))
        a, b = latents.ravel(), result.latents.ravel()
        cosine.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    pipe.close()
    return {"psnr_worst_db": round(float(min(psnr)), 2), "psnr_mean_db": round(float(np.mean(psnr)), 2), "latent_cosine_worst": round(min(cosine), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an fp32 ONNX artifact (sdopt export MODEL --to onnx)")
    parser.add_argument("--base", type=Path, required=True, help="an int8 artifact of the same export, whose other components the recipes run beside")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--component", default="unet", choices=("unet", "vae_decoder"))
    parser.add_argument("--recipes", default="global,mean")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    record(args.source, args.work)
    stats = statistics(args.source, args.work, args.component)
    reference = pickle.loads((args.work / "reference.pkl").read_bytes())
    results = {}
    for recipe in args.recipes.split(","):
        started = time.time()
        artifact, excluded = quantized_copy(args.source, args.base, args.work, args.component, recipe, stats)
        results[recipe] = {**evaluate(artifact, reference), "more_kept_float": excluded, "seconds": round(time.time() - started)}
        shutil.rmtree(artifact)
        print(args.component, recipe, results[recipe], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"source": str(args.source), "component": args.component, "request": {"prompts": PROMPTS, "seeds": SEEDS, **REQUEST},
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
