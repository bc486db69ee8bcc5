"""The classical judge's own accuracy, on ground-truth pictures: before any model is judged by it.

    python measure/shapes_judge_accuracy.py --out docs/measurements/shapes_judge_accuracy.json

Ground truth: the 64 held-out captions drawn by the dataset's renderer (EVAL_SEED), and 1000
training pairs (seed 1). A judge that scores the truth below 1 would blame a model for its own errors.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sdopt.shapes.judge import judge
from sdopt.shapes.scenes import held_out_samples, samples


def accuracy(pairs) -> dict:
    verdicts = [judge(image, caption) for image, caption in pairs]
    objects = [o for v in verdicts for o in v.objects]
    return {
        "images": len(verdicts),
        "objects": len(objects),
        "mean_score": float(np.mean([v.score for v in verdicts])),
        "objects_fully_correct": float(np.mean([o.score == 1.0 for o in objects])),
        "color_found": float(np.mean([o.color_found for o in objects])),
        "shape_ok": float(np.mean([o.shape_ok for o in objects])),
        "position_ok": float(np.mean([o.position_ok for o in objects])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    result = {
        "held_out_64": accuracy(held_out_samples(64)),
        "training_1000_seed1": accuracy(samples(seed=1, n=1000)),
    }
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
