"""One client's heavy work does not hold sdopt serve's event loop: while a request's images are decoded, its prompt's
chunks counted or its answer encoded (seconds of CPU for large images and long prompts), /sdapi/v1/progress, /metrics
and the other clients' requests are answered.

Each test holds one such step (a stand-in that waits until the test lets it go, not a timed sleep) and asks for
progress meanwhile: on the event loop the step would keep progress from answering at all."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'sdopt[serve-test]'")

from serving import b64png, png_bytes, running_server  # noqa: E402

ONE_STEP = {"width": 64, "height": 64, "steps": 1}


def held(monkeypatch, owner, name: str) -> tuple[threading.Event, threading.Event]:
    """``owner.name`` made to wait, once called, until the test sets the second event (the first says it was called)."""
    called, release = threading.Event(), threading.Event()
    real = getattr(owner, name)

    def holding(*args, **kwargs):
        called.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, holding)
    return called, release


def answers_progress_while_held(url: str, called: threading.Event, release: threading.Event, path: str, **request) -> httpx.Response:
    """POST ``path`` from another thread; once it is held, GET /sdapi/v1/progress must answer. The POST's response."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(httpx.post, url + path, timeout=60, **request)
        try:
            assert called.wait(30), f"{path} never reached the held step"
            try:
                progress = httpx.get(url + "/sdapi/v1/progress", timeout=3)
            except httpx.TimeoutException:
                pytest.fail(f"/sdapi/v1/progress did not answer while {path} was held: the work is on the event loop")
        finally:
            release.set()
        assert progress.status_code == 200
        return heavy.result()


def test_img2img_images_are_prepared_off_the_event_loop(tiny_pipeline, monkeypatch):
    """Decoding the init image and mask (up to 16 megapixels), the resize and inpainting's fill."""
    from PIL import Image

    from sdopt.serve import api_a1111

    called, release = held(monkeypatch, api_a1111, "decode_image")
    body = {"prompt": "x", **ONE_STEP, "denoising_strength": 1, "init_images": [b64png(Image.new("RGB", (64, 64), "red"))]}
    with running_server(tiny_pipeline) as (url, _):
        answer = answers_progress_while_held(url, called, release, "/sdapi/v1/img2img", json=body)
    assert answer.status_code == 200, answer.text


def test_openai_edit_images_are_read_off_the_event_loop(tiny_pipeline, monkeypatch):
    """images.edit's image and mask files: decoded, their transparency read (up to 16 megapixels each)."""
    from PIL import Image

    from sdopt.serve import api_openai

    called, release = held(monkeypatch, api_openai, "read_image")
    upload = {"files": {"image": ("a.png", png_bytes(Image.new("RGB", (64, 64), "red")), "image/png")},
              "data": {"prompt": "x", "size": "64x64", "sdopt_steps": "1", "sdopt_strength": "1"}}
    with running_server(tiny_pipeline) as (url, _):
        answer = answers_progress_while_held(url, called, release, "/v1/images/edits", **upload)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("path, body", [
    ("/sdapi/v1/txt2img", {"prompt": "a (red:1.2) circle", **ONE_STEP}),  # AUTOMATIC1111's API reads every prompt's emphasis
    ("/v1/images/generations", {"prompt": "a (red:1.2) circle", "size": "64x64", "sdopt_steps": 1, "sdopt_prompt_emphasis": True}),
])
def test_prompt_chunks_are_counted_off_the_event_loop(tiny_pipeline, monkeypatch, path, body):
    """With emphasis a prompt's 75-token chunks are counted as it is submitted: ~0.4 s for OpenAI's 32,000 characters,
    and it waits for the tokenizer (Pipeline._tokenizing) while the worker encodes a batch."""
    called, release = held(monkeypatch, type(tiny_pipeline), "prompt_chunks")
    with running_server(tiny_pipeline) as (url, _):
        answer = answers_progress_while_held(url, called, release, path, json=body)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("api, path, body, encoder", [
    ("api_a1111", "/sdapi/v1/txt2img", {"prompt": "x", **ONE_STEP}, "encode_png"),
    ("api_openai", "/v1/images/generations", {"prompt": "x", "size": "64x64", "sdopt_steps": 1}, "image_bytes"),
])
def test_answers_are_encoded_off_the_event_loop(tiny_pipeline, monkeypatch, api, path, body, encoder):
    """The answer's PNGs: seconds for a batch of large images, or an inpainted picture the size of its init image."""
    import importlib

    called, release = held(monkeypatch, importlib.import_module(f"sdopt.serve.{api}"), encoder)
    with running_server(tiny_pipeline) as (url, _):
        answer = answers_progress_while_held(url, called, release, path, json=body)
    assert answer.status_code == 200, answer.text
