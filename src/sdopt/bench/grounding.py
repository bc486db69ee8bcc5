"""Prompt adherence in the bench: does each image show what its prompt asks for?

PSNR and SSIM say how far an artifact's images are from the reference's; they
cannot say whether either draws what was asked, which is what optimizations
that change the computation on purpose (fewer steps, caching, int4) must be
judged by. A grounding judge reads each prompt's objects (colour, shape,
position) and checks them in the image: a score in [0, 1] per image. The
judges are registered in sdopt.shapes.vlm (``JUDGES``): "classical" (the
shapes judge, sdopt.shapes.judge), "openai" and "transformers" (the same
questions to a vision-language model). ``--judge auto`` (the default) uses the
classical judge when every prompt is a shapes caption, and no judge otherwise:
a score is never made up for prompts the judge cannot read. The transformers
judge reads its model folder from $SDOPT_JUDGE_MODEL.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from sdopt.errors import SdoptError
from sdopt.shapes.vlm import JUDGES, make_judge

CHOICES = ("auto", "none", *JUDGES)

Judge = Callable[[Any, str], Any]  # (image, prompt) -> a Verdict with .score


def _all_shapes_captions(prompts: list[str]) -> bool:
    from sdopt.shapes.scenes import parse_caption

    try:
        for prompt in prompts:
            parse_caption(prompt)
    except ValueError:
        return False
    return True


def choose_judge(kind: str, prompts: list[str]) -> tuple[str, Judge] | None:
    """(name, judge) for a bench run's prompts, or None when no judge applies."""
    if kind not in CHOICES:
        raise SdoptError(f"unknown judge '{kind}'; choose one of: {', '.join(CHOICES)}")
    readable = kind != "none" and _all_shapes_captions(prompts)
    if kind == "none" or (kind == "auto" and not readable):
        return None
    if not readable:
        raise SdoptError(
            f"--judge {kind} asks each prompt's objects, and some prompts are not of the form "
            "'a red circle on the left [and a blue square on the right]': use such prompts, or --judge none"
        )
    kind = "classical" if kind == "auto" else kind
    model_path = os.environ.get("SDOPT_JUDGE_MODEL") if kind == "transformers" else None
    if kind == "transformers" and not (model_path and os.path.isfile(os.path.join(model_path, "config.json"))):
        # The judge loads its model on first use, after every artifact has run: a wrong folder would lose the whole bench.
        problem = f"SDOPT_JUDGE_MODEL={model_path} holds no config.json" if model_path else "SDOPT_JUDGE_MODEL is not set"
        raise SdoptError(f"--judge transformers reads its model from the folder SDOPT_JUDGE_MODEL names, and {problem}: "
                         "set it to a vision-language model saved with save_pretrained (e.g. a downloaded Qwen2.5-VL)")
    return kind, make_judge(kind, **({"model_path": model_path} if model_path else {})).judge


def unjudged_rows(report: dict, kind: str) -> list[str]:
    """The rows of ``report`` that ran but have no adherence although ``--judge kind`` was asked for by name: a model
    judge that failed once every artifact had run (assemble_report keeps the measurements and warns). "auto" and
    "none" ask for no judge in particular: auto with other prompts than shapes captions judges nothing, by design."""
    if kind in ("auto", "none"):
        return []
    return [a["name"] for a in report["artifacts"] if a.get("status") == "ok" and "adherence" not in a]


def adherence(judge: tuple[str, Judge], images: list, samples: list[dict], prompts: list[str]) -> dict[str, Any]:
    """The judge's score per image (written into each sample) and over the artifact's images."""
    name, run = judge
    scores = []
    for image, sample in zip(images, samples):
        score = float(run(image, prompts[sample["prompt_index"]]).score)
        sample["adherence"] = score
        scores.append(score)
    return {"judge": name, "mean": sum(scores) / len(scores), "min": min(scores), "images": len(scores)}
