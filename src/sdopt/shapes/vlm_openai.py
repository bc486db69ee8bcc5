"""The VLM judge over an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp server, ...).

One ``POST {url}/chat/completions`` per object, with the question and the picture and a strict
``json_schema`` response format, over ``urllib`` (no new dependency); transient failures are
retried with a doubling delay. Endpoint, model and key come from arguments or the environment
(``SDOPT_JUDGE_URL``, ``SDOPT_JUDGE_MODEL``, ``SDOPT_JUDGE_API_KEY``), never from code; the key
never appears in a message or a repr.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from sdopt.errors import SdoptError
from sdopt.shapes.scenes import ShapeObject
from sdopt.shapes.vlm import (
    MAX_TOKENS,
    SCHEMA_NAME,
    SEND_SIZE,
    AnswerError,
    QuestionJudge,
    answer_schema,
    excerpt,
    parse_answer,
    png_data_url,
    question,
)

ENV_URL = "SDOPT_JUDGE_URL"
ENV_MODEL = "SDOPT_JUDGE_MODEL"
ENV_API_KEY = "SDOPT_JUDGE_API_KEY"
RETRY_DELAY_S = 0.5  # before the first retry; doubles after each failed attempt
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


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


class OpenAIJudge(QuestionJudge):
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
            status = f"HTTP {e.code} {e.reason}" + (f": {excerpt(body)}" if body else "")
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
            raise _Failure(f"the response is not JSON: {excerpt(raw.decode('utf-8', 'replace'))}") from None
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Failure(f"the response is not a chat completion (no choices[0].message.content): {excerpt(json.dumps(body))}") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            refusal = body["choices"][0]["message"].get("refusal")
            raise _Failure(f"the model gave no text answer{f' (refusal: {excerpt(refusal)})' if refusal else ''}")
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




def openai_judge(url: str | None = None, model: str | None = None, api_key: str | None = None, timeout: float = 60.0, max_retries: int = 2) -> OpenAIJudge:
    """An ``OpenAIJudge`` whose missing settings come from the environment (``VlmSettings.resolve``)."""
    return OpenAIJudge(VlmSettings.resolve(url=url, model=model, api_key=api_key, timeout=timeout, max_retries=max_retries))
