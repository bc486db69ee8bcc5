"""Vision-language-model judges: the classical judge's questions, asked of a VLM.

For each object a shapes caption names ("a red circle on the left") the judge asks a VLM one
question: is there something of that colour, is it that shape, and where is it. The answer, a
JSON object ``{"color_found": bool, "shape_found": bool, "position": "left"|...|"none"}``,
becomes the same ``ObjectVerdict`` / ``Verdict`` as ``sdopt.shapes.judge`` gives, scored the
same way: (color_found + shape_ok + position_ok) / 3 per object, shape and position counting
only when the colour was found; the verdict's score is the mean over the objects.

* ``OpenAIJudge`` (``sdopt.shapes.vlm_openai``) asks an OpenAI-compatible chat-completions
  endpoint (vLLM, SGLang, llama.cpp server, ...) with a strict ``json_schema`` response format,
  over ``urllib`` (no new dependency).
* ``TransformersJudge`` (``sdopt.shapes.vlm_transformers``) asks a local transformers VLM folder,
  loaded lazily; the JSON is asked for in the prompt (local generation has no response format)
  and parsed from the reply.
* ``make_judge(kind, **options)`` builds one of them, or the classical judge, by name
  (``JUDGES``, the registry of judges).

This module holds what both VLM judges share: the prompt (``question``), the answer parsing
(``parse_answer``), the verdict building (``object_verdict``) and the loop over a caption's
objects (``QuestionJudge``), so only the transport differs. Every failure a user can
cause or meet (no endpoint configured, a server down, a garbled answer, a missing model) is an
``SdoptError`` with a one-line message; an API key never appears in one.

Importing this module needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import json
from collections.abc import Mapping
from typing import Protocol

from PIL import Image

from sdopt.errors import SdoptError
from sdopt.shapes.judge import ObjectVerdict, Verdict, as_pil_rgb
from sdopt.shapes.judge import judge as classical_judge
from sdopt.shapes.scenes import POSITIONS, ShapeObject, parse_caption

NO_POSITION = "none"
POSITION_ANSWERS: tuple[str, ...] = (*POSITIONS, NO_POSITION)
ANSWER_KEYS: tuple[str, ...] = ("color_found", "shape_found", "position")
SCHEMA_NAME = "object_check"

# The shapes pictures are 64x64: vision encoders are trained on inputs of a few hundred pixels
# (and some tile or patch at 14-28 px), so a 64 px picture would be a handful of patches, or
# be upscaled by the server with a smoothing filter. We upscale first, by a whole factor with
# nearest-neighbour resampling, so every source pixel becomes an exact block: no new colours
# at the edges, and shrinking back (box filter) gives the original picture again.
SEND_SIZE = 256
MAX_TOKENS = 200  # the answer is ~60 tokens of JSON


class Judge(Protocol):
    def judge(self, image, caption: str) -> Verdict: ...


# --- the question, the answer, the verdict (shared by both VLM judges) ---------------------


def answer_schema(obj: ShapeObject) -> dict:
    """The JSON schema of the answer about ``obj`` (strict: all keys required, no others)."""
    what = f"{obj.color} {obj.shape}"
    return {
        "type": "object",
        "properties": {
            "color_found": {"type": "boolean", "description": f"whether anything {obj.color} is in the image"},
            "shape_found": {"type": "boolean", "description": f"whether there is a {what} in the image"},
            "position": {
                "type": "string",
                "enum": list(POSITION_ANSWERS),
                "description": f"where the {what} is (or, if there is none, the {obj.color} object); "
                f"'{NO_POSITION}' if nothing is {obj.color}",
            },
        },
        "required": list(ANSWER_KEYS),
        "additionalProperties": False,
    }


def question(obj: ShapeObject) -> str:
    """The one question asked about ``obj``, with what each answer field means."""
    a = "an" if obj.color[0] in "aeiou" else "a"
    what = f"{a} {obj.color} {obj.shape}"
    where = ", ".join(POSITIONS[:-1]) + f" or {POSITIONS[-1]}"
    return (
        f"Is there {what} in this image? If there is, where is it: {where}?\n"
        "Answer with a JSON object with exactly these keys:\n"
        f'- "color_found": true if anything in the image is {obj.color}, else false;\n'
        f'- "shape_found": true if there is {what} (a {obj.shape} of that colour), else false;\n'
        f'- "position": where the {obj.color} {obj.shape} is ({where}); if there is no {obj.shape} '
        f'of that colour, where the {obj.color} object is; "{NO_POSITION}" if nothing is {obj.color}.'
    )


class AnswerError(ValueError):
    """A reply that is not a JSON answer matching the schema (the message says how)."""


def parse_answer(text: str) -> dict:
    """The answer in a reply: ``{"color_found": bool, "shape_found": bool, "position": str}``.

    The reply should be the JSON object alone; a Markdown code fence or words around it (as a
    local model without a response format may add) are tolerated: the first JSON object in the
    text is used. Keys other than the three are ignored; ``position`` is compared lower-cased.
    Raises ``AnswerError`` if there is no such object.
    """
    if not isinstance(text, str):
        raise AnswerError(f"the reply is not text but {type(text).__name__}")
    answer = _first_json_object(text)
    if answer is None:
        raise AnswerError(f"the reply is not a JSON object: {excerpt(text)}")
    missing = [key for key in ANSWER_KEYS if key not in answer]
    if missing:
        raise AnswerError(f"the answer lacks {', '.join(missing)}: {excerpt(text)}")
    for key in ("color_found", "shape_found"):
        if not isinstance(answer[key], bool):
            raise AnswerError(f"{key} is not true/false but {answer[key]!r}")
    position = answer["position"].strip().lower() if isinstance(answer["position"], str) else answer["position"]
    if position not in POSITION_ANSWERS:
        raise AnswerError(f"position is {answer['position']!r}, not one of {', '.join(POSITION_ANSWERS)}")
    return {"color_found": answer["color_found"], "shape_found": answer["shape_found"], "position": position}


def _first_json_object(text: str) -> dict | None:
    try:
        whole = json.loads(text)
    except ValueError:
        pass
    else:
        return whole if isinstance(whole, dict) else None
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(found, dict):
                return found
        start = text.find("{", start + 1)
    return None


def object_verdict(obj: ShapeObject, answer: Mapping) -> ObjectVerdict:
    """The verdict on ``obj`` from a parsed answer, scored as the classical judge scores.

    ``detected_position`` is the answer's position (None for "none"); ``detected_shape`` is the
    asked shape when the VLM saw it, else None (the question does not ask what else it saw).
    """
    color_found = bool(answer["color_found"])
    shape_ok = color_found and bool(answer["shape_found"])
    detected_position = None if answer["position"] == NO_POSITION else answer["position"]
    return ObjectVerdict.checked(obj, color_found, shape_ok, detected_position == obj.position, obj.shape if shape_ok else None, detected_position)


def prepare_image(image, size: int = SEND_SIZE) -> Image.Image:
    """``image`` (PIL image or uint8 HxWx3/4 array) as RGB, enlarged by a whole factor to about ``size`` px."""
    pil = as_pil_rgb(image)
    factor = max(1, round(size / max(pil.size)))
    if factor > 1:
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    return pil


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def excerpt(text: str, limit: int = 120) -> str:
    """A one-line, bounded rendering of some server text, for an error message."""
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


class QuestionJudge:
    """The shared loop: one question per object, one verdict per picture."""

    image_size = SEND_SIZE

    def judge(self, image, caption: str) -> Verdict:
        """How well ``image`` shows ``caption``; ``ValueError`` for a caption outside the grammar (as the classical judge)."""
        objects = parse_caption(caption)
        picture = prepare_image(image, self.image_size)
        return Verdict.of(tuple(object_verdict(obj, self._ask(picture, obj)) for obj in objects))

    def _ask(self, picture: Image.Image, obj: ShapeObject) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


# --- the classical judge, and choosing a judge by name ------------------------------------


class ClassicalJudge:
    """``sdopt.shapes.judge.judge`` behind the ``.judge(image, caption)`` interface."""

    def judge(self, image, caption: str) -> Verdict:
        return classical_judge(image, caption)

    def __repr__(self) -> str:
        return "ClassicalJudge()"


# Each judge's factory as "module:name", imported only when that judge is made: the transports'
# modules import this one for the question and the verdict.
JUDGES: dict[str, str] = {
    "classical": "sdopt.shapes.vlm:ClassicalJudge",
    "openai": "sdopt.shapes.vlm_openai:openai_judge",
    "transformers": "sdopt.shapes.vlm_transformers:TransformersJudge",
}


def make_judge(kind: str, **options) -> Judge:
    """The judge called ``kind`` (a key of ``JUDGES``), built with ``options``.

    "classical": no options. "openai": url, model, api_key, timeout, max_retries (url, model and
    api_key default to the environment). "transformers": model_path, device, max_new_tokens.
    """
    if kind not in JUDGES:
        raise SdoptError(f"unknown judge {kind!r}; known judges: {', '.join(JUDGES)}")
    module, name = JUDGES[kind].split(":")
    factory = getattr(importlib.import_module(module), name)
    accepted = [name for name, p in inspect.signature(factory).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise SdoptError(f"the {kind} judge has no option {', '.join(unknown)}; its options: {allowed}")
    if kind == "transformers" and "model_path" not in options:
        raise SdoptError("the transformers judge needs model_path, the folder of a local vision-language model")
    return factory(**options)
