"""The VLM judges (sdopt.shapes.vlm) against a local fake OpenAI-compatible endpoint.

No real VLM runs here: the fake server checks each request's shape and answers from the
picture it was sent, using the classical judge. So on the same pictures the VLM judge must
give the classical judge's verdicts, which proves the plumbing (image encoding, one question
per object, answer parsing, verdict building), not a model's vision.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from sdopt.errors import SdoptError
from sdopt.shapes import judge as classical
from sdopt.shapes import vlm, vlm_openai, vlm_transformers
from sdopt.shapes.scenes import POSITIONS, samples

KEY = "sk-test-0123456789-secret"
MODEL = "fake-vlm"
_QUESTION = re.compile(r"Is there (?:a|an) (?P<color>[a-z]+) (?P<shape>[a-z]+) in this image\?")


@pytest.fixture(autouse=True)
def _fast_retries_and_no_proxy(monkeypatch):
    monkeypatch.setattr(vlm_openai, "RETRY_DELAY_S", 0.01)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in (vlm_openai.ENV_URL, vlm_openai.ENV_MODEL, vlm_openai.ENV_API_KEY):
        monkeypatch.delenv(var, raising=False)


def classical_answer(picture: Image.Image, color: str, shape: str) -> dict:
    """What an ideal VLM answers: the classical judge's findings about the colour's blob."""
    found = classical.judge(picture, f"a {color} {shape} in the center").objects[0]
    return {
        "color_found": found.color_found,
        "shape_found": found.color_found and found.detected_shape == shape,
        "position": found.detected_position or "none",
    }


def check_request(handler, body: dict, api_key: str | None) -> list[str]:
    """Everything wrong with a chat-completions request from the judge (empty if nothing)."""
    problems = []
    if handler.path != "/v1/chat/completions":
        problems.append(f"path {handler.path}")
    auth = handler.headers.get("Authorization")
    if auth != (f"Bearer {api_key}" if api_key else None):
        problems.append(f"Authorization header {auth!r}")
    if body.get("model") != MODEL or body.get("temperature") != 0:
        problems.append(f"model/temperature {body.get('model')!r} {body.get('temperature')!r}")
    fmt = body.get("response_format", {})
    spec = fmt.get("json_schema", {})
    schema = spec.get("schema", {})
    if fmt.get("type") != "json_schema" or spec.get("name") != "object_check" or spec.get("strict") is not True:
        problems.append(f"response_format {fmt!r}")
    if set(schema.get("required", ())) != {"color_found", "shape_found", "position"}:
        problems.append(f"required {schema.get('required')!r}")
    if schema.get("properties", {}).get("position", {}).get("enum") != [*POSITIONS, "none"]:
        problems.append("position enum")
    (message,) = body["messages"]
    parts = {part["type"]: part for part in message["content"]}
    if message["role"] != "user" or set(parts) != {"text", "image_url"}:
        problems.append(f"message {message['role']} {sorted(parts)}")
    url = parts["image_url"]["image_url"]["url"]
    if not url.startswith("data:image/png;base64,"):
        problems.append(f"image url {url[:40]!r}")
    png = base64.b64decode(url.split(",", 1)[1])
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        problems.append("not a PNG")
    elif Image.open(io.BytesIO(png)).size != (256, 256):
        problems.append(f"image size {Image.open(io.BytesIO(png)).size}")
    if not _QUESTION.search(parts["text"]["text"]):
        problems.append(f"question {parts['text']['text'][:60]!r}")
    return problems


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


class FakeEndpoint:
    """A local OpenAI-compatible server; ``script(n, handler, body)`` decides the n-th answer.

    A script returns (status, payload) with payload a dict (sent as JSON) or bytes, or None to
    hold the connection without answering until the test ends.
    """

    def __init__(self, script, api_key: str | None = None):
        self.script, self.api_key = script, api_key
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                problems = check_request(self, body, endpoint.api_key)
                if problems:
                    endpoint.problems.extend(problems)
                    self._send(400, {"error": {"message": "; ".join(problems)}})
                    return
                answer = endpoint.script(len(endpoint.requests), self, body)
                if answer is None:
                    endpoint.release.wait(10)
                    return
                self._send(*answer)

            def _send(self, status, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    started = []

    def start(script, api_key=None):
        started.append(FakeEndpoint(script, api_key))
        return started[-1]

    yield start
    for server in started:
        server.close()


def answer_from_picture(n, handler, body):
    """The ideal VLM: answers the question from the picture it was sent."""
    parts = {part["type"]: part for part in body["messages"][0]["content"]}
    asked = _QUESTION.search(parts["text"]["text"])
    png = base64.b64decode(parts["image_url"]["image_url"]["url"].split(",", 1)[1])
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    return 200, completion(json.dumps(classical_answer(picture, asked["color"], asked["shape"])))


def judge_of(server, **options) -> vlm_openai.OpenAIJudge:
    settings = dict(url=server.url, model=MODEL, api_key=server.api_key, timeout=5.0, max_retries=2) | options
    return vlm_openai.OpenAIJudge(vlm_openai.VlmSettings(**settings))


# --- the verdicts equal the classical judge's -----------------------------------------------


def test_openai_judge_gives_the_classical_verdicts_on_ground_truth_and_mismatched_captions(endpoint):
    server = endpoint(answer_from_picture, api_key=KEY)
    judge = judge_of(server)
    pairs = list(samples(seed=3, n=20))
    captions = [text for _, text in pairs]
    scores, asked = [], 0
    for i, (image, text) in enumerate(pairs):
        # its own caption (mostly 1.0) and another picture's (partial scores: colour, shape or place wrong)
        for caption in (text, captions[(i + 7) % len(captions)]):
            expected, got = classical.judge(image, caption), judge.judge(image, caption)
            assert server.problems == []
            assert got.score == pytest.approx(expected.score), caption
            for e, g in zip(expected.objects, got.objects, strict=True):
                assert (g.object, g.color_found, g.shape_ok, g.position_ok) == (e.object, e.color_found, e.shape_ok, e.position_ok)
                assert g.score == pytest.approx(e.score)
                assert g.detected_position == e.detected_position
            scores.append(got.score)
            asked += len(got.objects)
    assert len(server.requests) == asked  # one question per object
    assert max(scores) == 1.0 and min(scores) < 1.0 and len({round(s, 3) for s in scores}) >= 3


def test_no_bearer_header_without_a_key_and_a_pil_image_works(endpoint):
    server = endpoint(answer_from_picture, api_key=None)
    image, text = next(samples(seed=0, n=1))
    got = judge_of(server).judge(Image.fromarray(image), text)
    assert server.problems == [] and got.score == classical.judge(image, text).score


def test_verdict_building_from_answers():
    obj = vlm.parse_caption("a red circle on the left")[0]
    cases = [
        ({"color_found": True, "shape_found": True, "position": "left"}, (True, True, True, 1.0)),
        ({"color_found": True, "shape_found": False, "position": "left"}, (True, False, True, 2 / 3)),
        ({"color_found": True, "shape_found": True, "position": "right"}, (True, True, False, 2 / 3)),
        ({"color_found": False, "shape_found": True, "position": "left"}, (False, False, False, 0.0)),  # nothing red: nothing counts
        ({"color_found": False, "shape_found": False, "position": "none"}, (False, False, False, 0.0)),
    ]
    for answer, (color, shape, position, score) in cases:
        v = vlm.object_verdict(obj, answer)
        assert (v.color_found, v.shape_ok, v.position_ok) == (color, shape, position)
        assert v.score == pytest.approx(score)
    assert vlm.object_verdict(obj, cases[-1][0]).detected_position is None


def test_answer_parsing_tolerates_fences_and_words_but_not_a_wrong_schema():
    good = {"color_found": True, "shape_found": False, "position": "top"}
    for reply in (json.dumps(good), f"```json\n{json.dumps(good)}\n```", f"Sure! {json.dumps(good)} Hope it helps."):
        assert vlm.parse_answer(reply) == good
    assert vlm.parse_answer('{"color_found": true, "shape_found": true, "position": " Left ", "why": "x"}')["position"] == "left"
    for bad in ("yes", "", "[1, 2]", '{"color_found": true}', '{"color_found": "yes", "shape_found": true, "position": "left"}',
                '{"color_found": true, "shape_found": true, "position": "upper left"}'):
        with pytest.raises(vlm.AnswerError):
            vlm.parse_answer(bad)


# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_arguments_then_the_environment(monkeypatch):
    monkeypatch.setenv("SDOPT_JUDGE_URL", "http://vlm.example:8000/v1")
    monkeypatch.setenv("SDOPT_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("SDOPT_JUDGE_API_KEY", KEY)
    s = vlm_openai.VlmSettings.resolve()
    assert (s.url, s.model, s.api_key, s.timeout, s.max_retries) == ("http://vlm.example:8000/v1", "env-model", KEY, 60.0, 2)
    s = vlm_openai.VlmSettings.resolve(url="http://other:1/v1", model="arg-model", timeout=5, max_retries=0)
    assert (s.url, s.model, s.api_key, s.timeout, s.max_retries) == ("http://other:1/v1", "arg-model", KEY, 5.0, 0)
    assert KEY not in repr(s) and KEY not in repr(vlm_openai.OpenAIJudge(s))


def test_missing_url_or_model_says_what_to_set(monkeypatch):
    with pytest.raises(SdoptError, match="SDOPT_JUDGE_URL.*SDOPT_JUDGE_MODEL"):
        vlm_openai.VlmSettings.resolve()
    monkeypatch.setenv("SDOPT_JUDGE_URL", "http://localhost:8000/v1")
    with pytest.raises(SdoptError, match="model.*SDOPT_JUDGE_MODEL") as e:
        vlm_openai.VlmSettings.resolve()
    assert "SDOPT_JUDGE_URL" not in str(e.value)
    with pytest.raises(SdoptError, match="SDOPT_JUDGE_URL"):
        vlm_openai.VlmSettings.resolve(model="m", environ={})
    with pytest.raises(SdoptError, match="http"):
        vlm_openai.VlmSettings.resolve(url="localhost:8000", model="m")


# --- failures --------------------------------------------------------------------------------


def test_a_server_error_is_retried(endpoint):
    def flaky(n, handler, body):
        return (500, {"error": "overloaded"}) if n == 1 else answer_from_picture(n, handler, body)

    server = endpoint(flaky, api_key=KEY)
    image, text = next(samples(seed=1, n=1))
    got = judge_of(server).judge(image, text)
    assert got.score == classical.judge(image, text).score
    assert len(server.requests) == 1 + len(vlm.parse_caption(text))


def test_garbage_answers_end_in_one_line_error_naming_the_url_not_the_key(endpoint):
    # the 10th request, the last one, is the 500 that echoes the key
    replies = [completion("I think there is a red circle."), (500, {"error": f"invalid key {KEY}"}),
               b"<html>502 gateway</html>", {"unexpected": True}]

    def garbage(n, handler, body):
        reply = replies[(n - 1) % len(replies)]
        return reply if isinstance(reply, tuple) else (200, reply)

    server = endpoint(garbage, api_key=KEY)
    image, text = next(samples(seed=2, n=1))
    for retries in (0, 1, 2, 3):
        with pytest.raises(SdoptError) as e:
            judge_of(server, max_retries=retries).judge(image, text)
        message = str(e.value)
        assert server.url in message and KEY not in message and "\n" not in message, message
    assert "invalid key <api key>" in message  # the server's text was shown, the key redacted
    assert len(server.requests) == 1 + 2 + 3 + 4


def test_a_client_error_is_not_retried(endpoint):
    server = endpoint(lambda n, h, b: (401, {"error": "bad key"}), api_key=KEY)
    with pytest.raises(SdoptError, match="HTTP 401.*SDOPT_JUDGE_API_KEY"):
        judge_of(server).judge(*next(samples(seed=0, n=1)))
    assert len(server.requests) == 1


def test_a_server_that_never_answers_times_out(endpoint):
    server = endpoint(lambda n, h, b: None)
    with pytest.raises(SdoptError, match="no answer within 0.3 s") as e:
        judge_of(server, timeout=0.3, max_retries=1).judge(*next(samples(seed=0, n=1)))
    assert server.url in str(e.value) and len(server.requests) == 2


def test_nothing_listening_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = vlm_openai.OpenAIJudge(vlm_openai.VlmSettings(url=f"http://127.0.0.1:{port}/v1", model=MODEL, max_retries=1))
    with pytest.raises(SdoptError, match=f"127.0.0.1:{port}.*cannot connect"):
        judge.judge(*next(samples(seed=0, n=1)))


# --- the transformers judge (generation monkeypatched: no weights here) ------------------------


def test_transformers_judge_parses_a_generated_reply(monkeypatch, tmp_path):
    judge = vlm_transformers.TransformersJudge(tmp_path)
    prompts = []

    def generate(picture, prompt):
        prompts.append(prompt)
        asked = _QUESTION.search(prompt)
        return "```json\n" + json.dumps(classical_answer(picture, asked["color"], asked["shape"])) + "\n```"

    monkeypatch.setattr(judge, "_generate", generate)
    for image, text in samples(seed=4, n=5):
        assert judge.judge(image, text).score == classical.judge(image, text).score
    assert all("JSON schema" in p and '"position"' in p for p in prompts)

    monkeypatch.setattr(judge, "_generate", lambda picture, prompt: "There is a red circle on the left.")
    with pytest.raises(SdoptError, match=f"{re.escape(str(tmp_path))}.*not a JSON object"):
        judge.judge(image, text)


def test_transformers_judge_says_what_is_missing(monkeypatch, tmp_path):
    image, text = next(samples(seed=0, n=1))
    with pytest.raises(SdoptError, match="no transformers model folder.*model_path"):
        vlm_transformers.TransformersJudge(tmp_path / "absent").judge(image, text)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError (and nothing heavy is imported)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(SdoptError, match="pip install transformers"):
        vlm_transformers.TransformersJudge(tmp_path).judge(image, text)


# --- choosing a judge ------------------------------------------------------------------------


def test_make_judge(monkeypatch, tmp_path):
    image, text = next(samples(seed=0, n=1))
    assert vlm.make_judge("classical").judge(image, text) == classical.judge(image, text)
    judge = vlm.make_judge("openai", url="http://localhost:8000/v1", model="m", max_retries=0)
    assert isinstance(judge, vlm_openai.OpenAIJudge) and judge.settings.max_retries == 0
    assert isinstance(vlm.make_judge("transformers", model_path=tmp_path), vlm_transformers.TransformersJudge)
    with pytest.raises(SdoptError, match="unknown judge 'nope'.*classical, openai, transformers"):
        vlm.make_judge("nope")
    with pytest.raises(SdoptError, match="no option colour"):
        vlm.make_judge("openai", url="http://x/v1", model="m", colour=1)
    with pytest.raises(SdoptError, match="model_path"):
        vlm.make_judge("transformers")
    with pytest.raises(SdoptError, match="SDOPT_JUDGE_URL"):
        vlm.make_judge("openai")


def test_importing_the_vlm_judge_stays_light():
    code = "import sys, sdopt, sdopt.shapes.vlm; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"
