"""Vision-language-model judges: the classical judge's questions, asked of a VLM.

For each object a shapes caption names ("a red circle on the left") the judge asks a VLM one
question: is there something of that colour, is it that shape, and where is it. The answer, a
JSON object ``{"color_found": bool, "shape_found": bool, "position": "left"|...|"none"}``,
becomes the same ``ObjectVerdict`` / ``Verdict`` as ``sdopt.shapes.judge`` gives, scored the
same way: (color_found + shape_ok + position_ok) / 3 per object, shape and position counting
only when the colour was found; the verdict's score is the mean over the objects.

* ``OpenAIJudge`` asks an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp
  server, ...) with a strict ``json_schema`` response format, over ``urllib`` (no new dependency).
* ``TransformersJudge`` asks a local transformers VLM folder, loaded lazily; the JSON is asked
  for in the prompt (local generation has no response format) and parsed from the reply.
* ``make_judge(kind, **options)`` builds one of them, or the classical judge, by name.

Both VLM judges share the prompt (``question``), the answer parsing (``parse_answer``) and the
verdict building (``object_verdict``), so only the transport differs. Every failure a user can
cause or meet (no endpoint configured, a server down, a garbled answer, a missing model) is an
``SdoptError`` with a one-line message; an API key never appears in one.

Importing this module needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import base64
import http.client
import inspect
import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from sdopt.errors import SdoptError
from sdopt.shapes.judge import ObjectVerdict, Verdict, as_pil_rgb
from sdopt.shapes.judge import judge as classical_judge
from sdopt.shapes.scenes import POSITIONS, ShapeObject, parse_caption

ENV_URL = "SDOPT_JUDGE_URL"
ENV_MODEL = "SDOPT_JUDGE_MODEL"
ENV_API_KEY = "SDOPT_JUDGE_API_KEY"

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
RETRY_DELAY_S = 0.5  # before the first retry; doubles after each failed attempt
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
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
        raise AnswerError(f"the reply is not a JSON object: {_excerpt(text)}")
    missing = [key for key in ANSWER_KEYS if key not in answer]
    if missing:
        raise AnswerError(f"the answer lacks {', '.join(missing)}: {_excerpt(text)}")
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


def _excerpt(text: str, limit: int = 120) -> str:
    """A one-line, bounded rendering of some server text, for an error message."""
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


class _QuestionJudge:
    """The shared loop: one question per object, one verdict per picture."""

    image_size = SEND_SIZE

    def judge(self, image, caption: str) -> Verdict:
        """How well ``image`` shows ``caption``; ``ValueError`` for a caption outside the grammar (as the classical judge)."""
        objects = parse_caption(caption)
        picture = prepare_image(image, self.image_size)
        return Verdict.of(tuple(object_verdict(obj, self._ask(picture, obj)) for obj in objects))

    def _ask(self, picture: Image.Image, obj: ShapeObject) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


# --- an OpenAI-compatible endpoint ---------------------------------------------------------


@dataclass(frozen=True)
class VlmSettings:
    """Where and how to reach an OpenAI-compatible VLM endpoint."""

    url: str  # the API's base URL, e.g. http://localhost:8000/v1 (requests go to {url}/chat/completions)
    model: str  # the served model's name
    api_key: str | None = field(default=None, repr=False)  # sent as a bearer token when set
    timeout: float = 60.0  # seconds, per connection / read
    max_retries: int = 2  # further attempts after a failed one

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SdoptError(f"the judge URL must be an http(s) URL such as http://localhost:8000/v1, got {_display_url(self.url)!r}")
        if not self.model:
            raise SdoptError("the judge model name is empty: set model or SDOPT_JUDGE_MODEL")
        if not self.timeout > 0:
            raise SdoptError(f"the judge timeout must be a positive number of seconds, got {self.timeout!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise SdoptError(f"max_retries must be a non-negative int, got {self.max_retries!r}")

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        environ: Mapping[str, str] | None = None,
    ) -> VlmSettings:
        """Settings from the arguments, each missing one (None or empty) from the environment:
        ``SDOPT_JUDGE_URL``, ``SDOPT_JUDGE_MODEL``, ``SDOPT_JUDGE_API_KEY``. URL and model have no default."""
        env = os.environ if environ is None else environ
        url = url or env.get(ENV_URL) or None
        model = model or env.get(ENV_MODEL) or None
        api_key = api_key or env.get(ENV_API_KEY) or None
        needed = (("url", ENV_URL, url, "http://localhost:8000/v1"), ("model", ENV_MODEL, model, "<the served model's name>"))
        missing = [(option, var, example) for option, var, value, example in needed if not value]
        if missing:
            raise SdoptError(
                "the VLM judge needs an OpenAI-compatible endpoint: set "
                + " and ".join(f"{option} (or the environment variable {var})" for option, var, _ in missing)
                + ", e.g. "
                + " ".join(f"{var}={example}" for _, var, example in missing)
            )
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise SdoptError(f"the judge timeout must be a number of seconds, got {timeout!r}") from None
        return cls(url=url, model=model, api_key=api_key, timeout=timeout, max_retries=max_retries)


def _display_url(url: str | None) -> str:
    """The URL without any user:password part, for messages."""
    try:
        parts = urllib.parse.urlsplit(url or "")
    except ValueError:
        return str(url)
    if parts.username is None and parts.password is None:
        return str(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _Failure(Exception):
    """One failed attempt; ``retry`` says whether another attempt may help."""

    def __init__(self, what: str, retry: bool = True):
        super().__init__(what)
        self.retry = retry


class OpenAIJudge(_QuestionJudge):
    """Asks an OpenAI-compatible chat-completions endpoint (``POST {url}/chat/completions``)."""

    def __init__(self, settings: VlmSettings, *, image_size: int = SEND_SIZE):
        self.settings = settings
        self.image_size = image_size
        self.endpoint = settings.url.rstrip("/") + "/chat/completions"

    def __repr__(self) -> str:
        return f"OpenAIJudge(url={_display_url(self.settings.url)!r}, model={self.settings.model!r})"

    def request_body(self, picture: Image.Image, obj: ShapeObject) -> dict:
        """The chat-completions request asking about ``obj`` in ``picture``."""
        return {
            "model": self.settings.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url(picture)}},
                        {"type": "text", "text": question(obj)},
                    ],
                }
            ],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
            "response_format": {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": answer_schema(obj)}},
        }

    def _ask(self, picture: Image.Image, obj: ShapeObject) -> dict:
        data = json.dumps(self.request_body(picture, obj)).encode("utf-8")
        attempts = 1 + self.settings.max_retries
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(data)
            except _Failure as failure:
                if not failure.retry or attempt == attempts:
                    tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise SdoptError(self._redact(f"VLM judge at {_display_url(self.endpoint)}: {failure}{tries}")) from None
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            body = _read_quietly(e)
            status = f"HTTP {e.code} {e.reason}" + (f": {_excerpt(body)}" if body else "")
            hint = " (check the API key: SDOPT_JUDGE_API_KEY)" if e.code in (401, 403) else ""
            hint = hint or (" (check the URL: it is the API's base, e.g. http://host:8000/v1, and the model name)" if e.code == 404 else "")
            raise _Failure(status + hint, retry=e.code in RETRYABLE_STATUS) from None
        except TimeoutError:
            raise _Failure(f"no answer within {self.settings.timeout:g} s (the timeout)") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise _Failure(f"no answer within {self.settings.timeout:g} s (the timeout)") from None
            raise _Failure(f"cannot connect: {reason}") from None
        except OSError as e:  # connection reset, remote closed
            raise _Failure(f"the connection failed: {type(e).__name__}: {e}") from None
        except http.client.HTTPException as e:  # a malformed or cut-off HTTP response
            raise _Failure(f"not a valid HTTP response: {type(e).__name__}: {e}") from None
        return self._answer_of(raw)

    @staticmethod
    def _answer_of(raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Failure(f"the response is not JSON: {_excerpt(raw.decode('utf-8', 'replace'))}") from None
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Failure(f"the response is not a chat completion (no choices[0].message.content): {_excerpt(json.dumps(body))}") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            refusal = body["choices"][0]["message"].get("refusal")
            raise _Failure(f"the model gave no text answer{f' (refusal: {_excerpt(refusal)})' if refusal else ''}")
        try:
            return parse_answer(content)
        except AnswerError as e:
            raise _Failure(str(e)) from None

    def _redact(self, message: str) -> str:
        key = self.settings.api_key
        return message.replace(key, "<api key>") if key else message


def _read_quietly(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode("utf-8", "replace")
    except Exception:
        return ""


# --- a local transformers model -------------------------------------------------------------


class TransformersJudge(_QuestionJudge):
    """Asks a local transformers vision-language model folder (loaded on first use, greedy decoding).

    The model is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` from
    ``model_path`` only (never a hub). Without a response format, the prompt asks for the JSON
    and ``parse_answer`` finds it in the reply; a reply without one is an ``SdoptError``
    (greedy decoding would give the same reply again, so there is no retry).
    """

    def __init__(self, model_path: str | os.PathLike, *, device: str | None = None, max_new_tokens: int = MAX_TOKENS, image_size: int = SEND_SIZE):
        self.model_path = Path(model_path)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.image_size = image_size
        self._processor = None
        self._model = None

    def __repr__(self) -> str:
        return f"TransformersJudge(model_path={str(self.model_path)!r})"

    def prompt(self, obj: ShapeObject) -> str:
        schema = json.dumps(answer_schema(obj), separators=(",", ":"))
        return f"{question(obj)}\nReply with only the JSON object, matching this JSON schema: {schema}"

    def _ask(self, picture: Image.Image, obj: ShapeObject) -> dict:
        reply = self._generate(picture, self.prompt(obj))
        try:
            return parse_answer(reply)
        except AnswerError as e:
            raise SdoptError(f"VLM judge {self.model_path}: {e}") from None

    def _generate(self, picture: Image.Image, prompt: str) -> str:
        """The model's greedy reply to ``prompt`` about ``picture`` (the one place that runs the model)."""
        processor, model = self._load()
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        try:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, AttributeError) as e:
            raise SdoptError(f"VLM judge {self.model_path}: the processor has no usable chat template ({e})") from None
        inputs = processor(text=[text], images=[picture], return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    def _load(self):
        if self._model is not None:
            return self._processor, self._model
        if not (self.model_path / "config.json").is_file():
            raise SdoptError(
                f"no transformers model folder at {self.model_path} (no config.json): pass model_path, "
                "the folder of a vision-language model saved with save_pretrained (e.g. a downloaded Qwen2.5-VL)"
            )
        try:
            import torch
            import transformers
        except ImportError:
            raise SdoptError("the transformers judge needs the Python packages transformers and torch: pip install transformers torch") from None
        auto_model = getattr(transformers, "AutoModelForImageTextToText", None)
        if auto_model is None:
            raise SdoptError(f"transformers {transformers.__version__} has no AutoModelForImageTextToText: pip install -U transformers")
        version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
        dtype_option = "dtype" if version >= (4, 56) else "torch_dtype"  # renamed in 4.56
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
            model = auto_model.from_pretrained(self.model_path, local_files_only=True, **{dtype_option: "auto"})
        except (OSError, ValueError, KeyError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SdoptError(f"cannot load a vision-language model from {self.model_path}: {first_line}") from None
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._processor, self._model = processor, model.to(device).eval()
        return self._processor, self._model


# --- the classical judge, and choosing a judge by name ------------------------------------


class ClassicalJudge:
    """``sdopt.shapes.judge.judge`` behind the ``.judge(image, caption)`` interface."""

    def judge(self, image, caption: str) -> Verdict:
        return classical_judge(image, caption)

    def __repr__(self) -> str:
        return "ClassicalJudge()"


def _openai_judge(url: str | None = None, model: str | None = None, api_key: str | None = None, timeout: float = 60.0, max_retries: int = 2) -> OpenAIJudge:
    return OpenAIJudge(VlmSettings.resolve(url=url, model=model, api_key=api_key, timeout=timeout, max_retries=max_retries))


JUDGES: dict[str, Callable[..., Judge]] = {
    "classical": ClassicalJudge,
    "openai": _openai_judge,
    "transformers": TransformersJudge,
}


def make_judge(kind: str, **options) -> Judge:
    """The judge called ``kind`` (a key of ``JUDGES``), built with ``options``.

    "classical": no options. "openai": url, model, api_key, timeout, max_retries (url, model and
    api_key default to the environment). "transformers": model_path, device, max_new_tokens.
    """
    factory = JUDGES.get(kind)
    if factory is None:
        raise SdoptError(f"unknown judge {kind!r}; known judges: {', '.join(JUDGES)}")
    accepted = [name for name, p in inspect.signature(factory).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise SdoptError(f"the {kind} judge has no option {', '.join(unknown)}; its options: {allowed}")
    if kind == "transformers" and "model_path" not in options:
        raise SdoptError("the transformers judge needs model_path, the folder of a local vision-language model")
    return factory(**options)
