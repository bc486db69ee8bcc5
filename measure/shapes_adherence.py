"""A shapes model's prompt adherence on the held-out prompts, per guidance scale, and whether two trainings agree.

    python measure/shapes_adherence.py MODEL [--guidance 3,5,7.5] [--same-as OTHER_MODEL] --out FILE.json

One image per held-out prompt (seed 0, 20 Euler steps, 64x64), judged by the classical judge:
the mean score and, per object, how often its colour was found and its shape and position were
right. ``--same-as``: a second training of the same seed and command; the weights are compared
tensor by tensor and its adherence measured the same way (the issue asks for it within 0.05).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sdopt
from sdopt import GenerateRequest
from sdopt.machine import fingerprint
from sdopt.shapes.judge import judge
from sdopt.shapes.scenes import held_out_prompts

COMPONENTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


def adherence(model: Path, guidance: float, prompts: list[str]) -> dict:
    pipe = sdopt.load(model)
    verdicts = [
        judge(pipe.generate(GenerateRequest(prompt=p, seed=0, steps=20, height=64, width=64, guidance_scale=guidance, scheduler="euler")).images[0], p)
        for p in prompts
    ]
    objects = [o for v in verdicts for o in v.objects]
    one = [v.score for v in verdicts if len(v.objects) == 1]
    two = [v.score for v in verdicts if len(v.objects) == 2]
    return {
        "guidance": guidance,
        "adherence": float(np.mean([v.score for v in verdicts])),
        "one_object": float(np.mean(one)) if one else None,
        "two_objects": float(np.mean(two)) if two else None,
        "color_found": float(np.mean([o.color_found for o in objects])),
        "shape_ok": float(np.mean([o.shape_ok for o in objects])),
        "position_ok": float(np.mean([o.position_ok for o in objects])),
    }


def weight_differences(a: Path, b: Path) -> dict:
    from safetensors.numpy import load_file

    result = {}
    for name in COMPONENTS:
        first, second = load_file(a / name), load_file(b / name)
        if first.keys() != second.keys():
            result[name] = "different tensors"
            continue
        result[name] = float(max(np.abs(first[k].astype(np.float64) - second[k]).max() for k in first))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--guidance", default="3,5,7.5", help="comma-separated guidance scales")
    parser.add_argument("--prompts", type=int, default=64, help="how many held-out prompts (at most 128)")
    parser.add_argument("--same-as", type=Path, help="a second training of the same seed and command, to compare")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    prompts = held_out_prompts(args.prompts)
    scales = [float(g) for g in args.guidance.split(",")]
    result: dict = {"model": str(args.model), "prompts": len(prompts), "machine": fingerprint()}
    result["by_guidance"] = [adherence(args.model, g, prompts) for g in scales]
    if args.same_as:
        result["second_training"] = {
            "model": str(args.same_as),
            "max_abs_weight_difference": weight_differences(args.model, args.same_as),
            "by_guidance": [adherence(args.same_as, g, prompts) for g in scales],
        }
    result["seconds"] = time.perf_counter() - start
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
