"""What TensorRT's int8/fp8 engines are built from, judged on a CPU: the Q/DQ UNet graphs run by ONNX Runtime.

    python measure/tensorrt_qdq_quality.py MODEL --work DIR -o REPORT_DIR [--prompts FILE] [bench options...]

No TensorRT engine can be built without an NVIDIA GPU, but the graph `sdopt export --to tensorrt
--precision int8|fp8` keeps for its builder can be run: its UNet quantized by ModelOpt and calibrated
exactly as the exporter does (sdopt.tensorrt.quantize, on the inputs the UNet sees while MODEL generates
the built-in calibration prompts), then placed in an ONNX artifact of MODEL in the fp32 UNet's stead
(fp8 in the copy with ONNX's float8 Q/DQ that the export validates with). `sdopt bench` then runs MODEL
(the reference), the fp32 ONNX artifact and the two Q/DQ ones on the same prompts and seeds: on the shapes
model (trained: `sdopt init-model shapes`) with its adherence judge, what the quantization costs in what
the images show.

What this does not say: how fast the engines are, and how TensorRT's own int8/fp8 kernels round (ONNX
Runtime runs int8 Q/DQ through its integer kernels, fp8 Q/DQ in float with fp8-rounded values). Remaining
arguments go to `sdopt bench` (e.g. --profile cpu-shapes).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from sdopt.export.onnx import _trace_to_onnx
from sdopt.export.spec import family_specs, trace_inputs
from sdopt.manifest import files_in, hash_components, read_manifest
from sdopt.quant.calibration import CALIBRATION_PROMPTS, calibration_record, record_inputs
from sdopt.runtime.torch import load_module
from sdopt.tensorrt.quantize import CONFIGS, QUANTIZED, ModelOptQuantizer


def sdopt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sdopt.cli", *args], check=True)


def qdq_artifact(model: Path, onnx_fp32: Path, out: Path, precision: str, samples: list) -> None:
    """``onnx_fp32`` with its UNet graph replaced by the Q/DQ one the TensorRT exporter keeps (as ONNX Runtime runs it)."""
    manifest = read_manifest(model)
    spec = family_specs(manifest.pipeline_family, {})["unet"]
    module = load_module(model, manifest, "unet", torch.float32)
    quantizer = ModelOptQuantizer(precision, samples, calibration_record(CALIBRATION_PROMPTS, True, list(QUANTIZED), "unet", None, len(samples)))
    applied = quantizer.apply(spec, module)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(onnx_fp32, tmp)
    folder = tmp / "unet"
    for old in folder.glob("model.onnx*"):
        old.unlink()
    traced = folder / "traced" / "model.onnx"
    traced.parent.mkdir()
    _trace_to_onnx(spec, module, trace_inputs("unet", manifest.model), traced, 18)
    runnable = quantizer.runnable(traced, folder)  # int8: the graph itself; fp8: its copy written in folder
    if runnable == traced:
        shutil.move(traced, folder / "model.onnx")
    shutil.rmtree(folder / "traced")
    artifact = read_manifest(tmp)
    entry = artifact.components["unet"]
    entry.files = files_in(folder, tmp, (".onnx", ".onnx_data", ".json"))
    entry.quantization = {**quantizer.component_record(applied),
                          "note": "the Q/DQ graph sdopt export --to tensorrt keeps, run by ONNX Runtime (measure/tensorrt_qdq_quality.py)"}
    artifact.parity.pop("unet", None)  # the fp32 graph's: not this one's
    hash_components(artifact.components, tmp)
    artifact.write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("-o", "--output", required=True)
    args, bench_args = parser.parse_known_args()
    args.work.mkdir(parents=True, exist_ok=True)
    onnx_fp32 = args.work / "onnx-fp32"
    if not onnx_fp32.is_dir():
        sdopt("export", str(args.model), "--to", "onnx", "-q", "-o", str(onnx_fp32))
    samples = record_inputs(args.model, CALIBRATION_PROMPTS, list(QUANTIZED))["unet"]
    built = []
    for precision in CONFIGS:
        out = args.work / f"onnx-{precision}-qdq"
        qdq_artifact(args.model, onnx_fp32, out, precision, samples)
        built.append(str(out))
    sdopt("bench", str(args.model), str(onnx_fp32), *built, "--reference", str(args.model), "-o", args.output, "--force", *bench_args)


if __name__ == "__main__":
    main()
