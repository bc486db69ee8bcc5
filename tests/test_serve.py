"""sdopt serve on the tiny model, driven by real clients over real HTTP on loopback.

The OpenAI SDK and AUTOMATIC1111's webuiapi client talk to a uvicorn server in
a thread; httpx covers what neither client does (jobs, events, cancel, 429,
401, bad input). Sizes are 64x64 with 4 steps: the tiny model's own size.
"""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'sdopt[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'sdopt[serve-test]'")

from serving import SMALL, Faulty, SlowSteps, b64png, png, png_bytes, run_queued, running_server, wait_for  # noqa: E402
from sdopt import SdoptError  # noqa: E402

KEY = "test-key-123"


# --- the OpenAI SDK ------------------------------------------------------------------
def test_openai_sdk_generates_decodable_images(tiny_pipeline):
    openai = pytest.importorskip("openai", reason="pip install 'sdopt[serve-test]'")
    with running_server(tiny_pipeline, api_key=KEY) as (url, app):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        result = client.images.generate(model="tiny", prompt="a red circle", n=2, size="64x64", response_format="b64_json")
        images = [png(item.b64_json) for item in result.data]
        assert [im.size for im in images] == [(64, 64), (64, 64)]
        assert result.output_format == "png" and {im.format for im in images} == {"PNG"}  # what is sent (None before)
        # output_format and output_compression: was always PNG whatever was asked. JPEG and WebP carry the parameters
        # in their EXIF, as AUTOMATIC1111 writes them; a lower quality makes a smaller file.
        from sdopt.infotext import parameters_text

        seed = result_seed(result)
        for fmt in ("jpeg", "webp"):
            sent = client.images.generate(model="tiny", prompt="a red circle", size="64x64", output_format=fmt, extra_body={"sdopt_seed": seed})
            small = client.images.generate(model="tiny", prompt="a red circle", size="64x64", output_format=fmt, output_compression=10,
                                           extra_body={"sdopt_seed": seed})
            full, low = png(sent.data[0].b64_json), png(small.data[0].b64_json)
            assert sent.output_format == fmt and full.format == fmt.upper() and f"Seed: {seed}," in parameters_text(full)
            assert len(small.data[0].b64_json) < len(sent.data[0].b64_json)
            off = [np.abs(np.asarray(full, dtype=int) - np.asarray(im, dtype=int)).mean() for im in images]
            assert off[0] < off[1] / 2  # its own seed's image, encoded (JPEG halves the colour: ~11 levels on noise), not another
            link = client.images.generate(model="tiny", prompt="x", size="64x64", response_format="url", output_format=fmt,
                                          output_compression=50).data[0].url
            got = httpx.get(link)
            assert got.status_code == 200 and got.headers["content-type"] == f"image/{fmt}" and f"/0.{fmt}?" in link
            assert httpx.get(link.replace("q=50", "q=90")).status_code == 403  # its quality is signed with it
        with pytest.raises(openai.UnprocessableEntityError, match="output_format"):
            client.images.generate(model="tiny", prompt="x", size="64x64", output_format="gif")
        assert result.created > 0
        assert [m.id for m in client.models.list().data] == ["tiny"]
        # No size (or "auto"): the model's own, 64x64 for the tiny model (512x512 for SD 1.5).
        assert png(client.images.generate(prompt="a cross").data[0].b64_json).size == (64, 64)
        assert httpx.get(url + "/health").json()["default_size"] == 64

        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.images.generate(model="dall-e-3", prompt="x", size="64x64")
        # response_format=url: signed links that need no key, as OpenAI's; a link changed or out of date is refused.
        linked = client.images.generate(model="tiny", prompt="a red circle", n=2, size="64x64", response_format="url",
                                        extra_body={"sdopt_seed": result_seed(result)})
        fetched = [httpx.get(item.url) for item in linked.data]  # no Authorization header
        assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in fetched)
        assert [np.asarray(png(base64.b64encode(r.content))).tolist() for r in fetched] == [np.asarray(im).tolist() for im in images]
        assert "Seed:" in png(base64.b64encode(fetched[0].content)).info["parameters"]
        assert httpx.get(linked.data[0].url.replace("/0.png", "/1.png")).status_code == 403  # another image, same signature
        assert httpx.get(re.sub(r"expires=(\d+)", lambda m: f"expires={int(m.group(1)) + 1}", linked.data[0].url)).status_code == 403
        from sdopt.serve.image_links import LIFETIME_S

        job_id = linked.data[0].url.split("/files/")[1].split("/")[0]
        stale = app.state.image_links.url(url, job_id, 0, now=time.time() - LIFETIME_S - 1)
        assert httpx.get(stale).status_code == 410 and "expired" in httpx.get(stale).json()["error"]["message"]
        app.state.worker.jobs[job_id].images_dropped = True  # what the worker marks once IMAGES_KEPT newer jobs have finished
        gone = httpx.get(linked.data[0].url)
        assert gone.status_code == 410 and "no longer kept" in gone.json()["error"]["message"]
        with pytest.raises(openai.UnprocessableEntityError, match="response_format"):
            client.images.generate(model="tiny", prompt="x", size="64x64", response_format="jpeg")
        with pytest.raises(openai.UnprocessableEntityError, match="size"):
            client.images.generate(model="tiny", prompt="x", size="big")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).images.generate(prompt="x", size="64x64")


def test_a_jpeg_sent_without_its_parameters_says_so_in_the_answer(tiny_pipeline):
    """A prompt and negative prompt too long for a JPEG's EXIF block (64 KB): the file goes without its parameters, which
    only the server's stderr said; the client, told every file carries them, read none and saw no warning."""
    with running_server(tiny_pipeline) as (url, app):
        body = {"prompt": "red circle, " * 2000, "sdopt_negative_prompt": "blue " * 2000, "size": "64x64", "sdopt_steps": 1}
        sent = httpx.post(url + "/v1/images/generations", json={**body, "output_format": "jpeg"}, timeout=60).json()
        assert any("do not fit a JPEG's EXIF block" in w for w in sent["sdopt_warnings"]), sent["sdopt_warnings"]
        kept = httpx.post(url + "/v1/images/generations", json={**body, "output_format": "webp"}, timeout=60).json()
        assert not any("EXIF" in w for w in kept["sdopt_warnings"])  # a WebP's EXIF holds them whole


def test_a_ray_serve_replica_answers_with_one_request_id(tiny_pipeline):
    """Behind Ray Serve's proxy, which sends X-Request-ID itself (its RequestIdMiddleware, the client's value where it
    sent one): the replica's own made two headers, of two values where the client's was unusable."""
    http_util = pytest.importorskip("ray.serve._private.http_util", reason="the ray extra is not installed: pip install 'sdopt[ray]'")
    from starlette.testclient import TestClient

    from sdopt.serve.server import build
    from sdopt.serve.settings import ServeSettings

    app = build(tiny_pipeline, ServeSettings(), "tiny", start_worker=False, replica="r1")
    client = TestClient(http_util.RequestIdMiddleware(app))  # not as a context: Ray's middleware sees no lifespan events
    for sent in ("client-7", "a spaced id"):
        assert client.get("/health", headers={"X-Request-ID": sent}).headers.get_list("x-request-id") == [sent]
    assert len(client.get("/health").headers.get_list("x-request-id")) == 1


def test_openai_body_that_is_not_a_json_object_is_named_as_the_body(tiny_pipeline):
    """A body that is not JSON, or JSON but not an object, is about no field: OpenAI's param is null and the message
    says what to send, not the parser's character offset ("0: JSON decode error") or "None: ..."."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for body in (b"xx", b"[1, 2]"):
            answer = httpx.post(url + "/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
            error = answer.json()["error"]
            assert answer.status_code == 422 and error["param"] is None, answer.text
            assert error["message"].startswith("the request body: ") and "send a JSON object" in error["message"]
        named = httpx.post(url + "/v1/images/generations", json={"size": "64x64"}).json()["error"]
        assert named["param"] == "prompt" and named["message"].startswith("prompt: ")  # a field's error still names it


def test_a_json_body_sent_as_form_data_is_told_the_content_type_to_send(tiny_pipeline):
    """curl -d '{"prompt": ...}' sends application/x-www-form-urlencoded (docs/serve.md's examples did): FastAPI reads no
    JSON then, and every API answered only "Input should be a valid dictionary", which does not say to send the header."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for path in ("/sdapi/v1/txt2img", "/v1/jobs", "/sdapi/v1/options"):
            answer = httpx.post(url + path, content=b'{"prompt": "x"}', headers={"Content-Type": "application/x-www-form-urlencoded"})
            message = answer.json()["detail"][0]["msg"]
            assert answer.status_code == 422 and "Content-Type: application/json" in message and "x-www-form-urlencoded" in message, answer.text
        answer = httpx.post(url + "/v1/images/generations", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
        error = answer.json()["error"]
        assert answer.status_code == 422 and error["param"] is None and "Content-Type: application/json" in error["message"], answer.text


def test_openai_size_that_int_cannot_read_is_422_not_500(tiny_pipeline):
    """str.isdigit() let through sizes int() refuses: "²x²" (a Unicode digit), a 5,000-digit side (past int()'s limit),
    and an edit's size sent as a file (no .partition): each a ValueError or AttributeError answered 500."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for size in ("\u00b2x\u00b2", "9" * 5000 + "x64"):
            answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": size})
            assert answer.status_code == 422 and answer.json()["error"]["param"] == "size", answer.text
        from PIL import Image

        answer = httpx.post(url + "/v1/images/edits", data={"prompt": "x"},
                            files={"image": ("a.png", png_bytes(Image.new("RGB", (64, 64))), "image/png"), "size": ("s.txt", b"64x64", "text/plain")})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "size", answer.text


def test_a_json_body_nested_too_deeply_or_not_utf8_is_422_as_one_that_is_not_json(tiny_pipeline):
    """json.loads raises RecursionError (100k '[') or UnicodeDecodeError, not JSONDecodeError, for these: FastAPI
    answered its 400 "There was an error parsing the body", where every other unreadable body is a 422."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for body, why in ((b"[" * 100_000, "nested too deeply"), (b'{"prompt": "\xff"}', "not UTF-8")):
            for path in ("/sdapi/v1/txt2img", "/v1/jobs"):
                answer = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid" and why in answer.text, answer.text
            answer = httpx.post(url + "/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
            error = answer.json()["error"]
            assert answer.status_code == 422 and error["param"] is None and why in error["message"], answer.text


def test_openai_field_of_sdopts_prefix_the_endpoint_does_not_take_is_refused_not_ignored(tiny_pipeline):
    """sdopt_ is sdopt's own prefix (the SDK's extra_body): a misspelt sdopt_seed, an sdopt_scheduler, or an edit's
    sdopt_prompt_emphasis (a generations field) was accepted and did nothing, so the image was not the one asked for and
    the client was told nothing. Refused before it is queued, naming the field and the nearest one it takes."""
    from PIL import Image

    with running_server(tiny_pipeline, start_worker=False) as (url, app):  # no worker: a queued job never ends
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64", "sdopt_sed": 3}, timeout=5)
        error = answer.json()["error"]
        assert answer.status_code == 422 and error["param"] == "sdopt_sed" and "did you mean sdopt_seed?" in error["message"], answer.text
        answer = httpx.post(url + "/v1/images/edits", data={"prompt": "x", "sdopt_prompt_emphasis": "true"},
                            files={"image": ("a.png", png_bytes(Image.new("RGB", (64, 64))), "image/png")}, timeout=5)
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "sdopt_prompt_emphasis", answer.text
        assert app.state.worker.queue_depth == 0


def test_openai_stream_true_is_refused_not_answered_with_json_the_sdk_reads_as_no_events(tiny_pipeline):
    """The SDK's stream=True reads server-sent events: a JSON answer read that way was an empty stream, no image and no
    error, while the server made the image for nobody. Refused before it is queued, naming the field."""
    openai = pytest.importorskip("openai")
    from PIL import Image

    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=5)  # no worker: a queued job never ends
        with pytest.raises(openai.UnprocessableEntityError, match="stream=false") as caught:
            list(client.images.generate(prompt="x", size="64x64", stream=True))
        assert caught.value.body["param"] == "stream"
        with pytest.raises(openai.UnprocessableEntityError, match="stream=false"):
            list(client.images.edit(image=("a.png", png_bytes(Image.new("RGB", (64, 64))), "image/png"), prompt="x", stream=True))
        assert app.state.worker.queue_depth == 0


def _linked(url: str) -> str:
    """A response_format=url link to a new image."""
    body = {"prompt": "a cross", "size": "64x64", "response_format": "url", "sdopt_seed": 3, "sdopt_steps": 2}
    response = httpx.post(url + "/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["url"]


def test_an_image_link_from_before_a_restart_is_gone_and_says_what_to_do(tiny_pipeline):
    """Without --image-dir a restart ends every link: 410 saying why and what to do, not a 403 that blames the link."""
    with running_server(tiny_pipeline) as (url, _):
        link = _linked(url)
    with running_server(tiny_pipeline) as (again, _):
        gone = httpx.get(link.replace(url, again))
        changed = httpx.get(_linked(again).replace("/0.png", "/1.png"))
    assert gone.status_code == 410 and "--image-dir" in gone.json()["error"]["message"], gone.text
    assert changed.status_code == 403  # a link changed by hand is still refused as such


def test_image_links_outlive_a_restart_with_image_dir(tiny_pipeline, tmp_path):
    """With --image-dir the image and the links' signing key are on disk: a link made before a restart still answers
    its image, and a changed one is still refused."""
    folder = tmp_path / "links"
    with running_server(tiny_pipeline, image_dir=str(folder)) as (url, _):
        link = _linked(url)
        before = httpx.get(link).content
    with running_server(tiny_pipeline, image_dir=str(folder)) as (again, app):  # a restart: a new app, a new port
        assert app.state.worker.jobs == {}
        after = httpx.get(link.replace(url, again))
        assert after.status_code == 200 and after.content == before and after.headers["content-type"] == "image/png"
        assert httpx.get(link.replace(url, again).replace("/0.png", "/1.png")).status_code == 403  # a changed link still is refused
    assert (folder / "link-key").stat().st_mode & 0o077 == 0  # the key is this user's alone


def test_a_link_from_another_key_does_not_tell_a_stranger_where_the_image_dir_is(tiny_pipeline, tmp_path):
    """The links' route needs no credentials, even behind --api-key: a made-up link naming another key (k=) was answered
    410 quoting --image-dir's absolute path (/home/alice/links/link-key), the operator's home and user name; so was a
    link whose image was deleted from the folder."""
    import shutil

    folder = tmp_path / "home" / "alice" / "links"
    with running_server(tiny_pipeline, image_dir=str(folder)) as (url, _):
        link = _linked(url)
    shutil.rmtree(folder / link.split("/")[-2])  # the image deleted from the folder while its link still runs
    with running_server(tiny_pipeline, image_dir=str(folder), api_key="k3y", start_worker=False) as (url, _):
        other_key = httpx.get(url + "/v1/images/files/anyjob/0.png", params={"expires": 1, "signature": "0" * 32, "k": "deadbeef"})
        deleted = httpx.get(url + "/v1/images/files/" + link.split("/v1/images/files/")[1])
    for gone in (other_key, deleted):
        message = gone.json()["error"]["message"]
        assert gone.status_code == 410 and "--image-dir" in message, gone.text
        assert "alice" not in message and str(tmp_path) not in message, message


def test_image_links_behind_replicas_need_a_shared_image_dir(tiny_pipeline, tmp_path):
    """Behind several replicas (sdopt serve --ray) a link may reach another replica than the one that made the image:
    with one --image-dir they all see, that one answers it (url was refused behind replicas whatever the flags);
    without, the request is refused saying what to give."""
    folder = tmp_path / "shared"
    with running_server(tiny_pipeline, replica="r1", image_dir=str(folder)) as (one, _), \
            running_server(tiny_pipeline, replica="r2", image_dir=str(folder)) as (other, app):
        link = _linked(one)
        made = httpx.get(link)
        there = httpx.get(link.replace(one, other))
        assert app.state.worker.jobs == {}  # the other replica never saw the job
        assert made.status_code == there.status_code == 200 and made.content == there.content
        assert httpx.get(link.replace(one, other).replace("/0.png", "/1.png")).status_code == 403
    with running_server(tiny_pipeline, replica="r1") as (url, _):
        body = {"prompt": "a cross", "size": "64x64", "response_format": "url", "sdopt_steps": 2}
        refused = httpx.post(url + "/v1/images/generations", json=body, timeout=60)
    assert refused.status_code == 400 and "--image-dir" in refused.json()["error"]["message"], refused.text


def result_seed(result) -> int:
    """The seed an OpenAI answer's first image was made with, from the parameters its PNG carries."""
    return int(re.search(r"Seed: (\d+)", png(result.data[0].b64_json).info["parameters"]).group(1))


def test_openai_edit_of_a_whole_picture_on_an_inpainting_checkpoint_says_to_send_a_mask(tmp_path):
    """An opaque image and no mask is img2img of the whole picture, which an inpainting checkpoint cannot run: the 422
    named the loop's Python arguments ("it needs init_image and mask_image"), though the client had sent its image and
    an edit has no such fields. It says now what the SDK sends: a mask whose fully transparent pixels mark the area."""
    import sdopt
    from PIL import Image

    from sdopt.zoo import write_model

    with sdopt.load(write_model("tiny-inpaint", tmp_path / "tiny-inpaint", seed=0, progress=False)) as pipe:
        with running_server(pipe, start_worker=False) as (url, app):
            answer = httpx.post(url + "/v1/images/edits", data={"prompt": "x"}, timeout=5,
                                files={"image": ("a.png", png_bytes(Image.new("RGB", (64, 64), (9, 9, 9))), "image/png")})
            error = answer.json()["error"]
            assert answer.status_code == 422 and error["param"] == "mask", answer.text
            assert "fully transparent" in error["message"] and "init_image" not in error["message"]
            # Text alone: the 422 was the loop's, at loc "mask" of a txt2img request (which has no mask field) and param
            # "mask_image" of a generation, naming init_image and mask_image. It names the route and fields that can run it.
            txt2img = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}, timeout=5)
            assert txt2img.status_code == 422 and "send it to /sdapi/v1/img2img with init_images and a mask" in txt2img.json()["detail"], txt2img.text
            generation = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64"}, timeout=5)
            error = generation.json()["error"]
            assert generation.status_code == 422 and error["param"] is None and "images.edit, /v1/images/edits" in error["message"], generation.text
            assert "mask_image" not in txt2img.text + generation.text
            assert app.state.worker.queue_depth == 0


def test_openai_generations_refuse_an_empty_prompt_as_edits_do(tiny_pipeline):
    """An empty prompt made a picture of nothing on OpenAI's generations and was refused on its edits (and by OpenAI's own
    API): refused on both, pointing at the native API, which takes one."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "  ", "size": "64x64"}, timeout=10)
        error = answer.json()["error"]
        assert answer.status_code == 422 and error["param"] == "prompt" and "give the prompt" in error["message"], answer.text
        native = httpx.post(url + "/v1/jobs", json={"prompt": "", "width": 64, "height": 64, "steps": 2}, timeout=10)
        assert native.status_code == 202, native.text


def test_a_refusal_names_the_fields_of_the_api_the_client_sent(tiny_pipeline):
    """The loop's checks wrote its Python arguments into the message: an AUTOMATIC1111 client that sent cfg_scale -1 read
    "guidance_scale=-1.0", denoising_strength 0 "strength=0.0", though loc named its own field. Said in its fields now."""
    from PIL import Image

    img = b64png(Image.new("RGB", (64, 64), (9, 9, 9)))
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        for route, body, field, said in [
                ("/sdapi/v1/txt2img", {"cfg_scale": -1}, "cfg_scale", "cfg_scale=-1.0: must be a finite number from 0 to 50"),
                ("/sdapi/v1/img2img", {"init_images": [img], "denoising_strength": 0}, "denoising_strength", "denoising_strength=0.0: must be"),
                ("/sdapi/v1/img2img", {"init_images": [img], "denoising_strength": 0.01, "sampler_name": "LCM"}, "denoising_strength",
                 "denoising_strength=0.01 leaves LCMScheduler no step (int(50 x strength) = 0): raise denoising_strength to 0.02 "
                 "or more, or use another sampler (sampler_name)")]:
            answer = httpx.post(url + route, json={"prompt": "x", "width": 64, "height": 64, "steps": 2, **body}, timeout=10)
            detail = answer.json()["detail"][0]
            assert answer.status_code == 422 and detail["loc"] == ["body", field] and detail["msg"].startswith(said), answer.text
        assert app.state.worker.queue_depth == 0
    from sdopt import GenerateRequest
    from sdopt.errors import SdoptError

    with pytest.raises(SdoptError, match=r"^guidance_scale=-1: must be"):  # Python's own, outside a request's check
        GenerateRequest(prompt="x", guidance_scale=-1).validate()


def test_what_only_the_run_finds_names_the_fields_of_the_api_the_client_sent(tiny_pipeline, tmp_path):
    """serve's check names a request's fields as its API does, but the worker thread ran the call without that mapping:
    its warnings told an AUTOMATIC1111 client of "guidance_scale=1" (it sent cfg_scale) and an OpenAI one of
    "guidance_end=0.5" (sdopt_guidance_end), and a LoRA file gone from --lora-dir since the check was to be given "as
    loras={'style.safetensors': 0.8}", a Python dict no HTTP client can send."""
    pytest.importorskip("peft")
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(b"checked to exist, never read")
    with running_server(tiny_pipeline, start_worker=False, lora_dir=str(loras)) as (url, app):
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x <lora:style:0.8>", **SMALL, "steps": 1}).json()
        (loras / "style.safetensors").unlink()  # gone between the request's check and its run
        app.state.worker.start()
        error = wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job['id']}", params={"images": False}).json()["error"])
        assert "does not exist" in error and "<lora:NAME:WEIGHT>" in error and "loras=" not in error, error
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 1, "cfg_scale": 1, "negative_prompt": "y"}, timeout=60)
        warnings = json.loads(answer.json()["info"])["sdopt_warnings"]
        assert answer.status_code == 200 and any(w.startswith("cfg_scale=1.0 runs no unconditional pass") for w in warnings), warnings
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64", "sdopt_steps": 1, "sdopt_guidance_scale": 1,
                                                                  "sdopt_guidance_end": 0.5}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [w.split(" ")[0] for w in answer.json()["sdopt_warnings"]] == ["sdopt_guidance_end=0.5"], answer.text


def test_the_api_schema_describes_an_unset_field_as_null(tiny_pipeline):
    """/docs and /openapi.json described a field left out as "None: the server's default" (sdopt_steps, seed, width...):
    Python's word, where the JSON a client sends says null."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        schema = httpx.get(url + "/openapi.json").json()

    def descriptions(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from ([value] if key == "description" and isinstance(value, str) else descriptions(value))
        elif isinstance(node, list):
            for value in node:
                yield from descriptions(value)

    said = list(descriptions(schema))
    assert any(text.startswith("null: the server's default") for text in said), said
    assert not [text for text in said if re.search(r"\bNone\b", text)]


def test_a_refusal_tells_a_json_client_of_null_not_pythons_none(tiny_pipeline):
    """sdopt_cache_interval past the loop's 1,000 was refused with "..., or None (the artifact's default)": a JSON client
    sends null, and None is no JSON. Python's own message keeps None."""
    from sdopt import GenerateRequest

    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "sdopt_cache_interval": 100_000}, timeout=10)
        error = answer.json()["error"]
        assert answer.status_code == 422 and error["param"] == "sdopt_cache_interval", answer.text
        assert error["message"].endswith("or null (the artifact's default)") and "None" not in error["message"], answer.text
    with pytest.raises(SdoptError, match=r"or None \(the artifact's default\)$"):
        GenerateRequest(prompt="x", cache_interval=100_000).validate()


def test_a_refusal_names_the_part_of_a_field_that_holds_several_values(tiny_pipeline):
    """OpenAI's size holds width and height, AUTOMATIC1111's override_settings holds Clip skip's setting: a refusal named
    the whole field with one value, "size=63" of a "64x63" request and "override_settings=9" of {"CLIP_stop_at_last_layers": 9},
    values the client never sent. It names the part now, at the same loc."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x63"}, timeout=10)
        error = answer.json()["error"]
        assert answer.status_code == 422 and error["param"] == "size" and error["message"].startswith("size's height=63: must be"), answer.text
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                            "override_settings": {"CLIP_stop_at_last_layers": 9}}, timeout=10)
        detail = answer.json()["detail"][0]
        assert answer.status_code == 422 and detail["loc"] == ["body", "override_settings"], answer.text
        assert detail["msg"].startswith("CLIP_stop_at_last_layers=9: this model's text encoder has"), answer.text
        assert app.state.worker.queue_depth == 0


def test_a_refusal_tells_an_http_client_the_servers_flag_not_a_load_option_as_a_field(tiny_pipeline):
    """In the API's fields, the loop's advice to load with deep_cache or reshape read "load it with deep_cache=true",
    "reshape=true": a field the client could send, which no route takes. The client is told its server's flag."""
    import copy
    import dataclasses

    from sdopt import GenerateRequest
    from sdopt.errors import SdoptError, api_fields

    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "sdopt_cache_interval": 2}, timeout=10)
        detail = answer.json()["detail"][0]
        assert answer.status_code == 422 and detail["loc"] == ["body", "sdopt_cache_interval"], answer.text
        assert "sdopt serve --deep-cache" in detail["msg"] and "deep_cache=" not in detail["msg"], answer.text
        assert detail["msg"].endswith("or ask for sdopt_cache_interval=1"), answer.text
    static = copy.copy(tiny_pipeline)  # an OpenVINO artifact built for one shape (test_openvino's, without OpenVINO)
    static.manifest = dataclasses.replace(tiny_pipeline.manifest, static_shapes={"batch": 1, "height": 64, "width": 64})
    with api_fields({}), pytest.raises(SdoptError, match=r"serve it with sdopt serve --reshape to compile") as refused:
        static.check_request(GenerateRequest(prompt="x", height=128, width=64, steps=2))
    assert "reshape=" not in str(refused.value)


def test_openai_sdk_edits_inpaint_where_the_mask_is_transparent(tiny_pipeline):
    """images.edit: OpenAI's mask (alpha 0 = edit) becomes the loop's (white = repaint), at strength 1, and the image
    equals the Python API's inpainting from the same seed; the image's own transparency serves when no mask is sent;
    nothing transparent edits the whole image (img2img at 0.8). Bad masks are refused naming the field."""
    openai = pytest.importorskip("openai", reason="pip install 'sdopt[serve-test]'")
    from PIL import Image, ImageDraw

    from sdopt import GenerateRequest

    photo = Image.fromarray((np.indices((64, 64)).sum(0) * 2 % 256).astype(np.uint8)).convert("RGB")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle([16, 8, 47, 39], fill=(0, 0, 0, 0))  # transparent: edit here
    repaint = Image.fromarray(np.where(np.asarray(mask.getchannel("A")) == 0, 255, 0).astype(np.uint8), "L")
    with running_server(tiny_pipeline) as (url, app):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        edited = client.images.edit(image=("photo.png", png_bytes(photo)), mask=("mask.png", png_bytes(mask)), prompt="a red apple",
                                    n=2, extra_body={"sdopt_seed": 5})
        steps = next(iter(app.state.worker.jobs.values())).spec.steps  # OpenAI's API has no steps: the server's default
        ours = tiny_pipeline.generate(GenerateRequest(prompt="a red apple", num_images=2, seeds=[5, 6], steps=steps, height=64, width=64,
                                                      init_image=photo, mask_image=repaint, strength=1.0))
        assert [np.array_equal(np.asarray(png(d.b64_json)), np.asarray(im)) for d, im in zip(edited.data, ours.images)] == [True, True]

        # No mask: the image's own transparent pixels are the area (dall-e-2's rule); a fully opaque image is edited whole.
        cut_out = photo.convert("RGBA")
        cut_out.putalpha(mask.getchannel("A"))
        same = client.images.edit(image=("cut.png", png_bytes(cut_out)), prompt="a red apple", n=2, extra_body={"sdopt_seed": 5})
        assert [d.b64_json for d in same.data] == [d.b64_json for d in edited.data]
        client.images.edit(image=("photo.png", png_bytes(photo)), prompt="a watercolor", size="64x64")
        asked = [job.describe() for job in app.state.worker.jobs.values()]  # a finished job has let go of its pictures: their sizes
        assert [(a["strength"], a["mask_image"]) for a in asked] == [(1.0, "64x64"), (1.0, "64x64"), (0.8, None)]


        listed = client.images.edit(image=[("cut.png", png_bytes(cut_out))], prompt="a red apple", extra_body={"sdopt_seed": 5})
        assert listed.data[0].b64_json == edited.data[0].b64_json  # a list of one image: the SDK's image[] field
        webp = client.images.edit(image=("cut.png", png_bytes(cut_out)), prompt="a red apple", output_format="webp",
                                  extra_body={"sdopt_seed": 5, "output_compression": 40})
        assert webp.output_format == "webp" and png(webp.data[0].b64_json).format == "WEBP"  # the form's fields, as JSON's
        # Several images (gpt-image-1's references): refused, saying what to send; never the first alone in silence.
        for count in (2, 5):
            with pytest.raises(openai.UnprocessableEntityError, match="one image per request .* send only the image to edit") as refused:
                client.images.edit(image=[(f"{i}.png", png_bytes(photo)) for i in range(count)], prompt="x")
            assert refused.value.body["param"] == "image"
        with pytest.raises(openai.UnprocessableEntityError, match="alpha channel"):
            client.images.edit(image=("photo.png", png_bytes(photo)), mask=("mask.png", png_bytes(repaint)), prompt="x")
        with pytest.raises(openai.UnprocessableEntityError, match="the mask is 32x32 but the image is 64x64"):
            client.images.edit(image=("photo.png", png_bytes(photo)), mask=("mask.png", png_bytes(mask.resize((32, 32)))), prompt="x")
        with pytest.raises(openai.UnprocessableEntityError, match="nothing to edit"):
            client.images.edit(image=("photo.png", png_bytes(photo)), mask=("mask.png", png_bytes(photo.convert("RGBA"))), prompt="x")
        with pytest.raises(openai.UnprocessableEntityError, match="sdopt_strength"):
            client.images.edit(image=("photo.png", png_bytes(photo)), prompt="x", extra_body={"sdopt_strength": 2})
        response = httpx.post(url + "/v1/images/edits", json={"prompt": "x"}, timeout=30)
        assert response.status_code == 422 and "multipart/form-data" in response.text


# --- AUTOMATIC1111's webuiapi client ---------------------------------------------------
def test_webuiapi_txt2img_and_inpaint_with_basic_auth(tiny_pipeline):
    webuiapi = pytest.importorskip("webuiapi", reason="pip install 'sdopt[serve-test]'")
    from PIL import Image, ImageDraw

    with running_server(tiny_pipeline, api_auth="alice:s3cret") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=4)
        with pytest.raises(RuntimeError, match="401"):
            api.txt2img(prompt="a blue square", width=64, height=64, seed=3)
        api.set_auth("alice", "s3cret")

        result = api.txt2img(prompt="a blue square", width=64, height=64, seed=3, steps=4, batch_size=2)
        assert [im.size for im in result.images] == [(64, 64), (64, 64)]
        assert result.info["all_seeds"] == [3, 4]  # AUTOMATIC1111 numbers a batch seed, seed+1, ...
        assert result.info["sdopt_scheduler"] == "euler"
        assert result.info["sdopt_ignored"] == []  # webuiapi's own defaults change nothing here

        init = Image.new("RGB", (64, 64), (200, 30, 30))
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).rectangle([16, 16, 47, 47], fill=255)
        result = api.img2img(images=[init], mask_image=mask, prompt="a green circle", width=64, height=64, steps=4,
                             seed=5, denoising_strength=0.6, mask_blur=0)
        assert result.images[0].size == (64, 64)
        assert result.info["denoising_strength"] == 0.6
        assert result.info["sdopt_ignored"] == [] and result.info["is_using_inpainting_conditioning"] is False  # a 4-channel UNet

        # The same seed again gives the same picture: nothing of one request leaks into the next.
        again = api.img2img(images=[init], mask_image=mask, prompt="a green circle", width=64, height=64, steps=4,
                            seed=5, denoising_strength=0.6, mask_blur=0)
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(again.images[0]))


def test_a1111_and_openai_requests_take_the_levers_as_sdopt_fields(tiny_pipeline):
    # Step-feature caching and truncated guidance, which the native API takes as cache_interval and
    # guidance_end: AUTOMATIC1111's and OpenAI's APIs have no such fields, so they are sdopt_NAME there.
    openai = pytest.importorskip("openai", reason="pip install 'sdopt[serve-test]'")
    with running_server(tiny_pipeline) as (url, app):
        body = {"prompt": "a cross", **SMALL, "seed": 3}
        plain = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60).json()
        half = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "sdopt_guidance_end": 0.5}, timeout=60).json()
        info = json.loads(half["info"])
        assert info["sdopt_guidance_end"] == 0.5 and info["sdopt_ignored"] == []
        assert json.loads(plain["info"])["sdopt_guidance_end"] is None  # the artifact's default
        assert half["images"][0] != plain["images"][0]  # guided for 2 of the 4 steps: another image from the same seed
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        client.images.generate(prompt="a cross", size="64x64", extra_body={"sdopt_guidance_end": 0.5})
        assert [job.spec.guidance_end for job in app.state.worker.jobs.values() if job.api == "openai"] == [0.5]


def test_eta_reaches_the_samplers_that_read_it(tiny_pipeline):
    """AUTOMATIC1111's eta: DDIM's (and TCD's, as Forge and SD.Next name it); webuiapi sends eta 1 with every sampler,
    which the others do not read (nor in AUTOMATIC1111); Euler a here always adds its full noise, so another eta
    is listed as ignored. The native API takes eta too."""
    with running_server(tiny_pipeline) as (url, app):
        specs = {}
        for sampler, eta in (("DDIM", 0.5), ("TCD", 0.3), ("Euler", 1.0), ("Euler a", 0.5), ("Euler a", 1.0)):
            body = {"prompt": "a cross", **SMALL, "seed": 3, "sampler_name": sampler, "eta": eta, "force_task_id": f"{sampler}-{eta}"}
            response = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60)
            assert response.status_code == 200, response.text
            specs[sampler, eta] = (app.state.worker.jobs[f"{sampler}-{eta}"].spec.eta, json.loads(response.json()["info"])["sdopt_ignored"])
        assert specs == {("DDIM", 0.5): (0.5, []), ("TCD", 0.3): (0.3, []), ("Euler", 1.0): (None, []),
                         ("Euler a", 0.5): (None, ["eta"]), ("Euler a", 1.0): (None, [])}
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL, "scheduler": "ddim", "eta": 0.25}).json()
        assert job["parameters"]["eta"] == 0.25
        refused = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL, "scheduler": "ddim", "eta": 2})
        assert refused.status_code == 422 and "eta" in refused.text


def test_the_servers_request_defaults_serve_what_a_request_does_not_say(tiny_pipeline):
    """sdopt serve --steps/--guidance/--scheduler: OpenAI's requests (no such fields; sdopt_steps and sdopt_guidance_scale
    override), native ones without them and the page take the server's; AUTOMATIC1111's keep its own (50 steps, cfg 7)."""
    openai = pytest.importorskip("openai", reason="pip install 'sdopt[serve-test]'")
    with running_server(tiny_pipeline, steps=3, guidance_scale=0.0, scheduler="euler") as (url, app):
        def last(api):
            spec = [job for job in app.state.worker.jobs.values() if job.api == api][-1].spec
            return spec.steps, spec.guidance_scale, spec.scheduler

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        client.images.generate(prompt="a cross", size="64x64")
        assert last("openai") == (3, 0.0, "euler")
        client.images.generate(prompt="a cross", size="64x64", extra_body={"sdopt_steps": 2, "sdopt_guidance_scale": 5.0, "sdopt_negative_prompt": "blur"})
        assert last("openai") == (2, 5.0, "euler")
        assert [job.spec.negative_prompt for job in app.state.worker.jobs.values() if job.api == "openai"] == ["", "blur"]
        with pytest.raises(openai.UnprocessableEntityError, match="sdopt_steps"):
            client.images.generate(prompt="a cross", size="64x64", extra_body={"sdopt_steps": 151})  # over --max-steps
        httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64}).raise_for_status()
        assert last("native") == (3, 0.0, "euler")
        httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 4, "guidance_scale": 2.0, "scheduler": "ddim"}).raise_for_status()
        assert last("native") == (4, 2.0, "ddim")
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64}, timeout=60).status_code == 200
        assert last("a1111") == (50, 7.0, "euler")  # AUTOMATIC1111's defaults: its sampler_index "Euler"
        page = httpx.get(url + "/").text  # the server's steps, the model's own size (the tiny model's 64)
        assert 'id="steps" type="number" value="3" min="1" max="150"' in page and 'id="width" type="number" value="64"' in page
    from sdopt.serve.settings import ServeSettings

    for bad, message in (({"steps": 0}, "--steps 0: must be an integer from 1 to --max-steps"), ({"steps": 40, "max_steps": 30}, "--max-steps (30)"),
                         ({"guidance_scale": 60.0}, "--guidance 60.0: must be a number from 0 to 50"), ({"scheduler": "nope"}, "unknown scheduler 'nope'")):
        with pytest.raises(SdoptError, match=re.escape(message)):
            ServeSettings(**bad)


@pytest.mark.parametrize("upscaler, mode, antialias", [(None, "bilinear", False), ("Latent (bicubic antialiased)", "bicubic", True),
                                                         ("Latent (nearest-exact)", "nearest-exact", False)])
def test_a1111_hires_fix_latent_upscalers_start_the_second_pass_from_the_first_pass_latents(tiny_pipeline, upscaler, mode, antialias):
    """AUTOMATIC1111's Latent upscalers (its API's default): each image's final latents interpolated to the second pass's
    size (torch's interpolate, the mode's way) and repainted from there without the VAE — the same images as those
    steps by hand; and a model upscaler sdopt lacks is still said to be done with Lanczos."""
    import torch

    from sdopt.request import GenerateRequest

    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6, "hr_second_pass_steps": 3, **({"hr_upscaler": upscaler} if upscaler else {})}
    body = {"prompt": "a cross", **SMALL, "seed": 5, "batch_size": 2, "sampler_name": "Euler"}
    with running_server(tiny_pipeline) as (url, app):
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={**body, **hires}, timeout=120).json()
        esrgan = json.loads(httpx.post(url + "/sdapi/v1/txt2img", json={**body, **hires, "hr_upscaler": "R-ESRGAN 4x+"}, timeout=120).json()["info"])
        modes = httpx.get(url + "/sdapi/v1/latent-upscale-modes").json()
    info = json.loads(answer["info"])
    assert info["sdopt_ignored"] == [] and info["sdopt_hires"]["upscaler"] == (upscaler or "Latent") and (info["width"], info["height"]) == (96, 96)
    assert esrgan["sdopt_ignored"] == ["hr_upscaler"] and esrgan["sdopt_hires"]["upscaler"] == "Lanczos"
    assert [m["name"] for m in modes][:2] == ["Latent", "Latent (antialiased)"] and len(modes) == 6
    for image, seed in zip(map(png, answer["images"]), (5, 6)):
        common = dict(prompt="a cross", seed=seed, seeds=[seed], guidance_scale=7.0, scheduler="euler", prompt_emphasis=True)
        first = tiny_pipeline.generate(GenerateRequest(**common, steps=SMALL["steps"], height=64, width=64))
        extra = {"antialias": True} if antialias else {}
        start = torch.nn.functional.interpolate(torch.from_numpy(first.latents), size=(12, 12), mode=mode, **extra).numpy()
        by_hand = tiny_pipeline.generate(GenerateRequest(**common, steps=3, height=96, width=96, init_latents=start, strength=0.6))
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(by_hand.images[0], dtype=np.int16)).max()
        assert diff <= 1, f"seed {seed}: the hires image differs from the steps by hand by {diff} levels"
        assert f"Hires upscaler: {upscaler or 'Latent'}" in image.info["parameters"]


def test_a1111_hires_fix_upscales_and_repaints_each_image(tiny_pipeline):
    """enable_hr: the first pass, each image upscaled (Lanczos) and repainted by img2img from its own seed — the same
    images as those two steps run by hand; AUTOMATIC1111's default upscaler is Latent (the next test)."""
    from PIL import Image

    from sdopt.request import GenerateRequest

    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.6, "hr_second_pass_steps": 3}
    body = {"prompt": "a cross", **SMALL, "seed": 5, "batch_size": 2, "sampler_name": "Euler"}
    with running_server(tiny_pipeline) as (url, app):
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={**body, **hires}, timeout=120).json()
        info = json.loads(answer["info"])
        first = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120).json()  # the first pass alone
        latent = json.loads(httpx.post(url + "/sdapi/v1/txt2img", json={**body, "enable_hr": True, "hr_scale": 2}, timeout=120).json()["info"])
        too_big = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "enable_hr": True, "hr_scale": 40, "width": 64}, timeout=120)
        again = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": png(answer["images"][0]).info["parameters"]}, timeout=120).json()
        again_info = json.loads(again["info"])
    with running_server(tiny_pipeline, max_queue=1) as (url, _):  # an accepted request's second pass is never refused half done
        small_queue = httpx.post(url + "/sdapi/v1/txt2img", json={**body, **hires}, timeout=120)
    assert small_queue.status_code == 200 and len(small_queue.json()["images"]) == 2
    images = [png(b64) for b64 in answer["images"]]
    assert [im.size for im in images] == [(96, 96)] * 2 and (info["width"], info["height"]) == (96, 96)
    assert info["sdopt_ignored"] == [] and info["sdopt_hires"]["upscaler"] == "Lanczos" and info["all_seeds"] == [5, 6]
    for image, small, seed in zip(images, map(png, first["images"]), (5, 6)):
        init = small.convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)
        by_hand = tiny_pipeline.generate(GenerateRequest(prompt="a cross", seed=seed, seeds=[seed], steps=3, height=96, width=96, guidance_scale=7.0,
                                                         scheduler="euler", init_image=init, strength=0.6, prompt_emphasis=True))
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(by_hand.images[0], dtype=np.int16)).max()
        assert diff <= 1, f"seed {seed}: the hires image differs from the two passes by hand by {diff} levels"
        text = image.info["parameters"]
        assert "Size: 64x64" in text and "Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Lanczos" in text
    assert latent["sdopt_ignored"] == [] and latent["sdopt_hires"]["upscaler"] == "Latent" and latent["width"] == 128
    assert again_info["sdopt_ignored"] == [] and again_info["sdopt_hires"]["second_pass_steps"] == 3
    # Made again from its parameters alone: alone now, where it was batched with its neighbour (a level at most, as above).
    assert np.abs(np.asarray(png(again["images"][0]), dtype=np.int16) - np.asarray(images[0], dtype=np.int16)).max() <= 1
    assert too_big.status_code == 422 and "hr_scale" in too_big.text  # refused before the first pass runs


# The keys of AUTOMATIC1111's Processed.js() (modules/processing.py, v1.10): its API's info, as a JSON string.
PROCESSED_JS_KEYS = (
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts", "styles",
    "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version",
)


def test_a1111_reports_ignored_fields_and_honours_force_task_id(tiny_pipeline):
    with running_server(tiny_pipeline) as (url, _):
        body = {"prompt": "a cross", **SMALL, "seed": 1, "force_task_id": "task(abc123)", "tiling": True,
                "restore_faces": True, "my_extension_field": {"x": 1}, "hr_scale": 2.0}
        response = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60)
        assert response.status_code == 200, response.text
        data = response.json()
        info = json.loads(data["info"])  # a JSON string, as AUTOMATIC1111 sends it
        assert info["task_id"] == "task(abc123)"
        missing = set(PROCESSED_JS_KEYS) - set(info)  # clients index it: info["sd_model_hash"] was a KeyError
        assert not missing, missing
        assert info["sd_model_hash"] == tiny_pipeline.model_hash and info["styles"] == [] and info["extra_generation_params"] == {}
        assert info["version"].startswith("sdopt ") and (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (-1, -1)
        assert info["sdopt_ignored"] == ["my_extension_field", "restore_faces", "tiling"]  # hr_scale: inert without enable_hr
        assert info["sdopt_warnings"] == []
        assert png(data["images"][0]).size == (64, 64)
        job = httpx.get(url + "/v1/jobs/task(abc123)", params={"images": False}).json()
        assert job["status"] == "succeeded" and job["api"] == "a1111"
        followed = httpx.get(url + "/sdapi/v1/progress", params={"id_task": "task(abc123)"}).json()
        assert followed["progress"] == 1.0 and followed["state"]["job"] == "task(abc123)"
        again = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "tiling": False}, timeout=60)
        assert again.status_code == 422 and "already in use" in again.text
        assert again.json()["detail"][0]["loc"] == ["body", "force_task_id"]
        # AUTOMATIC1111's schedule type: Karras where sdopt has the variant; another one is said to be ignored.
        for sampler, schedule, ours, ignored in (("DPM++ 2M", "Karras", "dpmpp_2m_karras", []), ("DPM++ 2M", "Exponential", "dpmpp_2m", ["scheduler"]),
                                                 ("Euler a", "Karras", "euler_a", ["scheduler"]), ("Euler", "Automatic", "euler", [])):
            answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "sampler_name": sampler, "scheduler": schedule}, timeout=60)
            info = json.loads(answer.json()["info"])
            assert (info["sdopt_scheduler"], info["sdopt_ignored"]) == (ours, ignored), (sampler, schedule)
        # A data: prefix on an input image is accepted, as AUTOMATIC1111 accepts it.
        from PIL import Image

        init = "data:image/png;base64," + b64png(Image.new("RGB", (64, 64), (0, 0, 255)))
        response = httpx.post(url + "/sdapi/v1/img2img", json={"prompt": "x", **SMALL, "init_images": [init]}, timeout=60)
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["denoising_strength"] == 0.75
        names = [s["name"] for s in httpx.get(url + "/sdapi/v1/samplers").json()]
        assert "Euler a" in names and "DPM++ 2M" in names
        model = httpx.get(url + "/sdapi/v1/sd-models").json()[0]
        assert model["model_name"] == "tiny" and model["hash"] == tiny_pipeline.model_hash and len(model["hash"]) == 10
        assert model["title"] == f"tiny [{model['hash']}]" == httpx.get(url + "/sdapi/v1/options").json()["sd_model_checkpoint"]
        for name in ("tiny", model["title"], model["hash"]):  # what clients send back: the title AUTOMATIC1111 lists, or less
            httpx.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": name}).raise_for_status()
        assert httpx.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": "other"}).status_code == 422
        assert f"Model hash: {model['hash']}," in png(response.json()["images"][0]).info["parameters"]  # the images say the same


# --- batching ---------------------------------------------------------------------------
def test_a_job_without_a_negative_prompt_never_shares_a_call_with_one_that_has_it():
    """SDXL base conditions a call with no negative prompt on zeros and encodes "" in a call where any row has one:
    so the two kinds of job batch apart, and a call of jobs that gave none passes none."""
    from sdopt.serve.jobs import JobSpec, generate_request

    plain, other, negative = JobSpec(prompt="x"), JobSpec(prompt="z"), JobSpec(prompt="y", negative_prompt="blurry")
    assert plain.batch_key() == other.batch_key() != negative.batch_key()
    assert generate_request([plain, other]).negative_prompt is None
    assert generate_request([negative]).negative_prompt == ["blurry"]


def test_jobs_that_fit_alone_but_not_together_run_in_calls_of_their_own(tiny_onnx_plain, monkeypatch):
    """ONNX Runtime's attention on a CPU needs memory for every image of a call at once (sdopt.runtime.attention_memory):
    two one-image jobs that each passed the check alone were batched into a call that did not, and both failed, each
    client told to ask for "fewer images" (walk qa88). The second now waits for a call of its own."""
    import sdopt
    from sdopt.runtime import attention_memory
    from sdopt.serve import jobs as J

    # The tiny model at 64x64, guided: 0.75 MiB of scores for one image, 1.5 MiB for two
    monkeypatch.setattr(attention_memory, "available_bytes", lambda: 2**20)
    with sdopt.load(tiny_onnx_plain) as pipeline:
        jobs = run_queued(pipeline, [J.JobSpec(prompt="a red circle", seed=1, **SMALL), J.JobSpec(prompt="a blue square", seed=2, **SMALL)])
    assert [(job.status, job.batch_size) for job in jobs] == [("succeeded", 1), ("succeeded", 1)], [job.error for job in jobs]


def test_batched_images_equal_the_images_made_alone(tiny_pipeline):
    """Three users' requests share one generate call; each gets the image its request gets alone."""
    from sdopt.request import GenerateRequest
    from sdopt.serve import jobs as J

    specs = [J.JobSpec(prompt=p, seed=s, **SMALL) for p, s in (("a red circle", 11), ("a blue square", 22), ("a green cross", 33))]
    jobs = run_queued(tiny_pipeline, specs)  # queued before the worker starts: one batch
    assert [job.status for job in jobs] == ["succeeded"] * 3
    assert [job.batch_size for job in jobs] == [3, 3, 3]
    for job, spec in zip(jobs, specs):
        alone = tiny_pipeline.generate(GenerateRequest(prompt=spec.prompt, seeds=[spec.seed], seed=spec.seed, steps=4, height=64, width=64))
        diff = np.abs(np.asarray(job.images[0], dtype=np.int16) - np.asarray(alone.images[0], dtype=np.int16))
        assert diff.max() <= 1, f"{spec.prompt}: batched differs from alone by {diff.max()} levels"
        # Each image's parameters are its own row's, not the batch's (sdopt.infotext)
        assert job.images[0].info["parameters"] == alone.images[0].info["parameters"]
        assert job.images[0].info["parameters"].startswith(spec.prompt + "\n") and f"Seed: {spec.seed}," in job.images[0].info["parameters"]


def test_each_client_is_told_the_warnings_of_its_own_request(tiny_pipeline):
    """A prompt cut at the text encoder's 77 tokens (or an init image resized, a field not used) was warned of in the
    server's log only: no API told the client. Each job now carries its own request's warnings, never those of another
    client's request in the same call (they quote its prompt)."""
    from sdopt.serve import jobs as J

    long, short = "a red fox in the snow " * 20, "a blue square"
    jobs = run_queued(tiny_pipeline, [J.JobSpec(prompt=long, seed=1, **SMALL), J.JobSpec(prompt=short, seed=2, **SMALL)])
    assert [job.batch_size for job in jobs] == [2, 2]  # one call
    assert any("the text encoder reads the first 77" in w for w in jobs[0].warnings) and jobs[1].warnings == []
    with running_server(tiny_pipeline) as (url, _):
        # (AUTOMATIC1111 reads a long prompt in chunks, cutting nothing: its prompt editing is a warning there)
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "a [cat:dog:0.5]", **SMALL, "seed": 1}, timeout=60)
        assert "prompt editing [cat:dog:0.5] is not done here" in " ".join(json.loads(answer.json()["info"])["sdopt_warnings"])
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": long, "size": "64x64", "sdopt_steps": 2}, timeout=60)
        assert answer.status_code == 200 and "the text encoder reads the first 77" in " ".join(answer.json()["sdopt_warnings"])
        job = httpx.post(url + "/v1/jobs", json={"prompt": short, **SMALL}, timeout=60).json()
        assert "warnings" in httpx.get(url + f"/v1/jobs/{job['id']}", params={"images": False}).json()


@pytest.mark.parametrize("with_mask", [False, True], ids=["img2img", "inpaint"])
def test_batched_img2img_and_inpaint_equal_the_images_made_alone(tiny_pipeline, with_mask):
    """Two users' img2img (or inpainting) jobs, each with its own picture and mask, share one call."""
    from PIL import Image, ImageDraw

    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    def mask(box):
        m = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(m).rectangle(box, fill=255)
        return m if with_mask else None

    specs = [
        J.JobSpec(prompt="a red circle", seed=5, n=2, init_image=Image.new("RGB", (64, 64), (200, 20, 20)), mask_image=mask([0, 0, 31, 63]), strength=0.7, **SMALL),
        J.JobSpec(prompt="a blue square", seed=9, init_image=Image.new("RGB", (64, 64), (20, 20, 200)), mask_image=mask([32, 0, 63, 63]), strength=0.7, **SMALL),
    ]
    worker = Worker(tiny_pipeline, max_batch=4)
    batched = [worker.submit(J.Job(spec=spec)) for spec in specs]
    worker.start()
    try:
        for job in batched:
            job.future.result(timeout=120)
        alone = []
        for spec in specs:  # now one at a time: nothing else is queued
            alone.append(worker.submit(J.Job(spec=spec)))
            alone[-1].future.result(timeout=120)
    finally:
        worker.stop()
    assert [j.status for j in batched + alone] == ["succeeded"] * 4
    assert [j.batch_size for j in batched] == [3, 3] and [j.batch_size for j in alone] == [2, 1]
    for together, single in zip(batched, alone):
        for a, b in zip(together.images, single.images):
            diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
            assert diff.max() <= 1, f"batched differs from alone by {diff.max()} levels"


def test_a_finished_job_lets_go_of_its_init_image_and_mask(tiny_pipeline):
    """The worker keeps its last FINISHED_KEPT (1,000) finished jobs; each kept its init image and mask decoded, up
    to 16 megapixels (48 MB): a native img2img job of a 2048x2048 picture grew the server by 16 MiB, kept for 1,000
    jobs. Once finished, a job keeps their sizes (GET /v1/jobs/{id}'s parameters), not their pixels; the spec the
    route submitted keeps its own."""
    from PIL import Image

    from sdopt.serve import jobs as J

    spec = J.JobSpec(prompt="a red circle", init_image=Image.new("RGB", (256, 128), (200, 20, 20)),
                     mask_image=Image.new("L", (256, 128), 255), strength=0.5, **{**SMALL, "steps": 2})
    [job] = run_queued(tiny_pipeline, [spec])
    assert job.status == "succeeded" and len(job.images) == 1
    assert job.spec.init_image is None and job.spec.mask_image is None
    assert job.describe()["init_image"] == "256x128" and job.describe()["mask_image"] == "256x128"
    assert spec.init_image is not None and spec.init_image.size == (256, 128)


def test_the_worker_gives_the_memory_each_call_freed_back_to_the_system(tiny_pipeline, monkeypatch):
    """glibc kept what each generate call freed in its arenas, and a server asked for many sizes grew by tens of MB a
    minute until it ran out of memory (qa112: 43 MB/min, 920 MB to 1.4 GB in 7 minutes, the Python heap flat). The
    worker now trims the C heap after every call, once that call's jobs have finished."""
    from sdopt.serve import jobs as J
    from sdopt.serve import worker as W

    trims = []
    worker = W.Worker(tiny_pipeline, max_batch=1)
    monkeypatch.setattr(W, "release_freed_memory", lambda: trims.append(sum(job.ended for job in worker.jobs.values())), raising=False)
    jobs = [worker.submit(J.Job(spec=J.JobSpec(prompt="a red circle", seed=seed, **{**SMALL, "steps": 1}))) for seed in (1, 2)]
    worker.start()
    try:
        for job in jobs:
            job.future.result(timeout=120)
    finally:
        worker.stop()  # joins the worker thread: its last trim is done
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert trims == [1, 2]  # one trim per call, each after its job ended


def test_freeing_memory_is_a_no_op_where_the_c_library_has_no_malloc_trim(monkeypatch):
    """macOS, musl and Windows have no malloc_trim: the server runs there as before, without an error."""
    import ctypes
    import platform

    from sdopt.serve import allocator

    class NoTrim:  # a C library without the symbol: ctypes raises AttributeError
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: NoTrim())
    allocator._malloc_trim.cache_clear()
    try:
        assert allocator.release_freed_memory() is False
    finally:
        monkeypatch.undo()
        allocator._malloc_trim.cache_clear()
    if platform.libc_ver()[0] == "glibc":
        assert allocator.release_freed_memory() is True


def test_jobs_that_cannot_share_a_call_run_apart(tiny_pipeline):
    from PIL import Image

    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    worker = Worker(tiny_pipeline, max_batch=8)
    a = worker.submit(J.Job(spec=J.JobSpec(prompt="a", **SMALL)))
    b = worker.submit(J.Job(spec=J.JobSpec(prompt="b", width=64, height=64, steps=3)))  # other steps
    c = worker.submit(J.Job(spec=J.JobSpec(prompt="c", **SMALL)))
    init = Image.new("RGB", (64, 64))
    d = worker.submit(J.Job(spec=J.JobSpec(prompt="d", init_image=init, strength=0.5, **SMALL)))  # img2img
    e = worker.submit(J.Job(spec=J.JobSpec(prompt="e", init_image=init, strength=0.75, **SMALL)))  # other strength
    f = worker.submit(J.Job(spec=J.JobSpec(prompt="f", cache_interval=1, **SMALL)))  # another caching interval
    g = worker.submit(J.Job(spec=J.JobSpec(prompt="g", guidance_end=0.5, **SMALL)))  # truncated guidance
    worker.start()
    try:
        for job in (a, b, c, d, e, f, g):
            job.future.result(timeout=120)
    finally:
        worker.stop()
    assert (a.batch_size, b.batch_size, c.batch_size, d.batch_size, e.batch_size, f.batch_size, g.batch_size) == (2, 1, 2, 1, 1, 1, 1)
    assert J.generate_request([g.spec]).guidance_end == 0.5 and J.generate_request([a.spec]).guidance_end is None


# --- cancel, queue, timeout -----------------------------------------------------------------
def test_cancel_stops_a_running_job_between_steps_and_the_server_goes_on(tiny_pipeline):
    with running_server(SlowSteps(tiny_pipeline, 0.2)) as (url, _):
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 40}).json()
        wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job['id']}", params={"images": False}).json()["step"] >= 2)
        response = httpx.delete(f"{url}/v1/jobs/{job['id']}")
        assert response.json() == {"id": job["id"], "status": "cancelled", "cancelled": True}
        time.sleep(0.5)  # a few steps' time: the call must have stopped, not run on
        state = httpx.get(f"{url}/v1/jobs/{job['id']}", params={"images": False}).json()
        assert state["status"] == "cancelled" and 2 <= state["step"] < 40
        assert httpx.get(url + "/health").json()["running"] == 0
        after = httpx.post(url + "/v1/jobs", json={"prompt": "y", **SMALL, "steps": 2}).json()
        done = wait_for(lambda: (lambda j: j if j["status"] != "queued" and j["status"] != "running" else None)(
            httpx.get(f"{url}/v1/jobs/{after['id']}", params={"images": False}).json()))
        assert done["status"] == "succeeded"


def test_a_shutdown_signal_answers_the_waiting_requests_503_and_the_server_exits(tiny_pipeline):
    """SIGINT or SIGTERM with a job running and one queued: uvicorn waits for the requests in flight before it exits,
    and they waited for their jobs (up to --job-timeout, 600 s by default; the QA walk saw a SIGTERM take 24 s with
    --job-timeout 20). The server's signal handler stops the worker: both are answered 503 at once and it exits."""
    import signal
    import threading

    from serving import free_port
    from sdopt.serve.server import build, http_server
    from sdopt.serve.settings import ServeSettings

    port = free_port()
    app = build(SlowSteps(tiny_pipeline, 0.2), ServeSettings(port=port), "tiny")
    server = http_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, answers = f"http://127.0.0.1:{port}", {}
    try:
        wait_for(lambda: server.started, timeout=20)
        posts = [threading.Thread(target=lambda path=path, body=body: answers.update({path: httpx.post(url + path, json=body, timeout=120)}))
                 for path, body in (("/sdapi/v1/txt2img", {"prompt": "x", **SMALL, "steps": 100}),
                                    ("/v1/images/generations", {"prompt": "y", "size": "64x64", "sdopt_steps": 100, "sdopt_guidance_scale": 3}))]
        for post in posts:
            post.start()
        wait_for(lambda: app.state.worker.current and app.state.worker.queue_depth == 1)
        started = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        thread.join(30)
        for post in posts:
            post.join(10)
        exited_in = time.monotonic() - started
    finally:
        server.should_exit = True
        app.state.worker.stop()
    assert not thread.is_alive() and exited_in < 10, exited_in
    a1111, openai = answers["/sdapi/v1/txt2img"], answers["/v1/images/generations"]
    assert a1111.status_code == 503 and "shutting down" in a1111.text, a1111.text
    assert openai.status_code == 503 and "shutting down" in openai.json()["error"]["message"], openai.text


def test_behind_a_proxy_under_a_prefix_the_links_carry_it(tiny_pipeline):
    """--root-path /sd: a proxy serving https://host/sd/ and stripping the prefix got OpenAI links to /v1/images/... (the
    proxy's root, not this server) and a /docs whose schema URL missed the prefix (walk qa55). OpenAI's routes answered
    their errors in AUTOMATIC1111's shape there ({"detail": ...}: the path they were told by began with /sd)."""
    import threading

    from serving import free_port
    from sdopt.cli.serving import root_path
    from sdopt.serve.server import build, http_server
    from sdopt.serve.settings import ServeSettings

    assert [root_path(v) for v in (None, "", "/", "sd", "/sd/", "/a/b")] == ["", "", "", "/sd", "/sd", "/a/b"]
    with pytest.raises(SdoptError, match="--root-path '/sd[?]x': give the path prefix"):
        root_path("/sd?x")
    port = free_port()
    app = build(tiny_pipeline, ServeSettings(port=port), "tiny")
    server = http_server(app, "127.0.0.1", port, root_path="/sd")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"  # as the proxy reaches it: the prefix stripped
    try:
        wait_for(lambda: server.started, timeout=20)
        answer = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64", "sdopt_steps": 2, "response_format": "url"},
                            timeout=60).json()
        link = answer["data"][0]["url"]
        assert link.startswith(f"{url}/sd/v1/images/"), link
        assert httpx.get(url + link.removeprefix(url + "/sd")).status_code == 200  # what the proxy asks for it
        assert "url: '/sd/openapi.json'" in httpx.get(url + "/docs").text
        assert httpx.post(url + "/v1/images/generations", json={"prompt": 5}).json()["error"]["param"] == "prompt"
        assert "DNS rebinding" in httpx.get(url + "/v1/models", headers={"Host": "evil.example"}).json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.worker.stop()


def test_a_request_arriving_during_shutdown_is_answered_503_as_the_waiting_ones(tiny_pipeline):
    """A request that comes in once the worker is stopping was answered 422 (a client error), while the requests
    already waiting got 503; a client retrying on 503 must get the same for both."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        app.state.worker.stop()
        for path, body in (("/sdapi/v1/txt2img", {"prompt": "x", **SMALL}), ("/v1/images/generations", {"prompt": "y", "size": "64x64"}),
                           ("/v1/jobs", {"prompt": "z", **SMALL})):
            response = httpx.post(url + path, json=body)
            assert response.status_code == 503 and "shutting down" in response.text, (path, response.status_code, response.text)


def test_a_batched_job_cancelled_alone_leaves_the_others_running(tiny_pipeline):
    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    worker = Worker(SlowSteps(tiny_pipeline, 0.1), max_batch=4)
    keep = worker.submit(J.Job(spec=J.JobSpec(prompt="keep", width=64, height=64, steps=10)))
    drop = worker.submit(J.Job(spec=J.JobSpec(prompt="drop", width=64, height=64, steps=10)))
    worker.start()
    try:
        wait_for(lambda: drop.step >= 2)
        assert worker.cancel(drop)
        assert drop.status == "cancelled" and drop.future.done()  # answered at once, not at the end of the call
        keep.future.result(timeout=60)
    finally:
        worker.stop()
    assert keep.status == "succeeded" and len(keep.images) == 1 and keep.batch_size == 2
    assert drop.images == [] and drop.latents is None  # its rows are thrown away: latents too (kept for 1,000 jobs before)


def test_a_job_cancelled_after_its_call_was_taken_and_before_it_started_stays_cancelled(tiny_pipeline):
    """Cancelled (an interrupt, a DELETE) in the moment between the worker taking the call and starting it, the job was
    set running again by start(): it ran, came back succeeded after its client was answered cancelled, said done twice
    and was counted as both."""
    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    worker = Worker(tiny_pipeline)
    job = worker.submit(J.Job(spec=J.JobSpec(prompt="x", width=64, height=64, steps=2)))
    taken = worker._take_batch()  # as the worker thread does, without starting it
    assert worker.cancel(job)
    worker._execute(*taken)
    assert job.status == "cancelled" and job.images == []
    assert [e["event"] for e in job.events].count("done") == 1
    assert 'sdopt_jobs_total{outcome="succeeded"} 0' in worker.metrics.render()


def test_full_queue_answers_429_with_retry_after(tiny_pipeline):
    with running_server(tiny_pipeline, max_queue=2, start_worker=False) as (url, _):
        for _ in range(2):
            assert httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL}).status_code == 202
        response = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert 'sdopt_jobs_rejected_total 1' in httpx.get(url + "/metrics").text


def test_a_job_past_its_timeout_is_answered_timed_out(tiny_pipeline):
    with running_server(SlowSteps(tiny_pipeline, 0.2), job_timeout=1.0) as (url, _):
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 50}, timeout=30)
        assert response.status_code == 504
        assert "timed out after 1 s" in response.text
        # About no field of the request: it named "prompt" (and OpenAI's invalid_request_error, a client's cue not to
        # retry) for a timeout, a cancel or the server's own failure
        assert response.json() == {"detail": response.json()["detail"]} and isinstance(response.json()["detail"], str)
        response = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64", "sdopt_steps": 50}, timeout=30)
        error = response.json()["error"]
        assert response.status_code == 504 and error["param"] is None and error["type"] == "server_error", error


def test_a_job_the_recent_pace_says_would_time_out_is_refused_at_submission(tiny_pipeline):
    """A 1024x1024 request on a CPU was queued, held the worker for the whole --job-timeout and got a 504. Once a call
    of its kind has run (here one that timed out), the next is refused at once with the estimate; a shorter one runs."""
    from sdopt.serve import jobs as J
    from sdopt.serve.worker import PACES_KEPT

    body = {"prompt": "x", "width": 64, "height": 64, "steps": 50}
    # A few steps run before the timeout, and the short job's 2 fit in it on a busy machine too (the timeout is what the
    # test waits for: 8 s and 0.5 s a step made the same test 4 s longer)
    with running_server(SlowSteps(tiny_pipeline, 0.25), job_timeout=4.0) as (url, app):
        assert httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=30).status_code == 504
        refused = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=30)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "steps", refused.text
        assert "past its --job-timeout of 4 s" in refused.text and "would take about" in refused.text
        assert app.state.worker.queue_depth == 0 and app.state.worker.metrics.jobs["timed_out"] == 1  # never queued
        assert httpx.post(url + "/sdapi/v1/txt2img", json={**body, "steps": 2}, timeout=30).status_code == 200
        # The paces kept are bounded: one per kind of call, however many sizes clients ask
        worker = app.state.worker
        for side in range(PACES_KEPT + 8):
            worker._record_pace(J.JobSpec(prompt="x", width=64 + 8 * side), 0.1)
        assert len(worker._paces) == PACES_KEPT


def test_a_single_step_longer_than_the_timeout_still_gives_the_pace(tiny_pipeline):
    """One step of a 1024x1024 image on a CPU outlasts a short --job-timeout: the call timed out at its first step,
    before a second could measure the pace between steps, and the same request was queued again and again."""
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 3}
    with running_server(SlowSteps(tiny_pipeline, 1.5), job_timeout=1.0) as (url, _):  # the server's stop waits for the step
        assert httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=30).status_code == 504
        refused = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=30)
        assert refused.status_code == 422 and "past its --job-timeout of 1 s" in refused.text, refused.text


def test_a_job_of_more_images_than_the_paced_call_is_not_refused_by_one_image_s_pace_times_its_images(tiny_pipeline):
    """A GPU runs 4 images in little more time than 1 (here: every step sleeps as long whatever the batch). A job of 4
    was estimated at 4 times one image's pace: refused with a 422, though it finished well within --job-timeout."""
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4}
    with running_server(SlowSteps(tiny_pipeline, 0.5), job_timeout=8.0) as (url, _):  # 5 calls: ~2.5 s a call
        one = httpx.post(url + "/v1/jobs", json=body, timeout=30).json()
        first = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{one['id']}").json())["status"] not in ("queued", "running") and j,
                         timeout=60)
        assert first["status"] == "succeeded", (first["error"], first["started"] - first["created"], first["finished"] - first["created"])
        four = httpx.post(url + "/v1/jobs", json={**body, "n": 4}, timeout=30)
        assert four.status_code == 202, four.text  # was 422: "would take about 10 s ... past its --job-timeout of 8 s"
        job = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{four.json()['id']}").json())["status"] not in ("queued", "running") and j,
                       timeout=60)
        assert job["status"] == "succeeded" and len(job["images"]) == 4, job["error"]


def test_openai_errors_carry_openais_types_for_rate_limits_and_server_failures():
    from sdopt.serve.app import _error_body

    assert _error_body("/v1/images/generations", 429, "full")["error"] | {"message": ""} == {
        "message": "", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    assert _error_body("/v1/images/generations", 500, "x")["error"]["type"] == "server_error"
    assert _error_body("/v1/images/edits", 422, "x", "size")["error"] == {"message": "x", "type": "invalid_request_error", "param": "size", "code": None}



def test_health_answers_503_while_the_worker_is_down(tiny_pipeline):
    """A probe reads the status code (curl -f, Kubernetes, a load balancer): /health said "worker down" with a 200."""
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        response = httpx.get(url + "/health")
        assert response.status_code == 503 and response.json()["status"] == "worker down"
        assert httpx.head(url + "/health").status_code == 503
        app.state.worker.start()
        response = httpx.get(url + "/health")
        assert response.status_code == 200 and response.json()["status"] == "ok"

# --- auth -----------------------------------------------------------------------------------
def test_credentials_are_required_everywhere_but_health(tiny_pipeline):
    with running_server(tiny_pipeline, api_key=KEY, api_auth="bob:pw") as (url, _):
        assert httpx.get(url + "/health").status_code == 200
        # a load balancer's or uptime monitor's HEAD probe (it answered 405)
        assert httpx.head(url + "/health").status_code == 200 and httpx.head(url + "/").status_code == 200
        for method, path in (("GET", "/metrics"), ("POST", "/v1/jobs"), ("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/txt2img"), ("GET", "/v1/models")):
            response = httpx.request(method, url + path, json={"prompt": "x"})
            assert response.status_code == 401, path
            assert "Bearer" in response.headers["WWW-Authenticate"] and "Basic" in response.headers["WWW-Authenticate"]
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/metrics", auth=("bob", "nope")).status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(url + "/metrics", auth=("bob", "pw")).status_code == 200


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/sdapi/v1/txt2img", {"width": 65}, "width"),
        ("/sdapi/v1/txt2img", {"width": 2048, "height": 2048}, "width"),  # over --max-pixels
        ("/sdapi/v1/txt2img", {"steps": 0}, "steps"),
        ("/sdapi/v1/txt2img", {"steps": 100000}, "steps"),
        ("/sdapi/v1/txt2img", {"batch_size": 50}, "batch_size"),
        ("/sdapi/v1/txt2img", {"sampler_name": "DPM++ SDE Exotic"}, "sampler_name"),
        ("/sdapi/v1/txt2img", {"cfg_scale": 1e9}, "cfg_scale"),
        ("/sdapi/v1/img2img", {"init_images": ["not base64!"]}, "init_images"),
        ("/sdapi/v1/img2img", {"init_images": [base64.b64encode(b"not an image").decode()]}, "init_images"),
        ("/sdapi/v1/img2img", {}, "init_images"),
        # the native API's cap: a 100 kB prompt was accepted, its chunks counted for seconds on the event loop
        ("/sdapi/v1/txt2img", {"prompt": "x" * 10_001}, "prompt"),
        ("/sdapi/v1/img2img", {"negative_prompt": "x" * 10_001}, "negative_prompt"),
        ("/sdapi/v1/txt2img", {"enable_hr": True, "hr_prompt": "x" * 10_001}, "hr_prompt"),
        ("/sdapi/v1/txt2img", {"infotext": "x\nNegative prompt: " + "x" * 10_001 + "\nSteps: 4"}, "infotext"),
        # uncapped, a 32 MiB body's infotext was parsed for seconds on the event loop
        ("/sdapi/v1/img2img", {"infotext": "x\nSteps: 4, " + "Key: value, " * 6_000}, "infotext"),
        ("/v1/jobs", {"n": 0}, "n"),
        ("/v1/jobs", {"scheduler": "nope"}, "scheduler"),
        ("/v1/jobs", {"strength": 0}, "strength"),
        ("/v1/jobs", {"strength": 0.5}, "strength"),  # sent without init_image: ignored unsaid before
        ("/v1/jobs", {"cache_interval": 0}, "cache_interval"),
        ("/v1/jobs", {"cache_interval": 2}, "cache_interval"),  # the tiny torch model has no shallow UNet branch: says --deep-cache
        ("/v1/jobs", {"guidance_end": 0}, "guidance_end"),
        ("/v1/jobs", {"guidance_end": 1.5}, "guidance_end"),
        ("/sdapi/v1/txt2img", {"sdopt_guidance_end": 1.5}, "sdopt_guidance_end"),
        ("/sdapi/v1/txt2img", {"sdopt_cache_interval": 2}, "sdopt_cache_interval"),  # named as this API names it
        ("/v1/images/generations", {"sdopt_cache_interval": 0}, "sdopt_cache_interval"),
        ("/v1/images/generations", {"sdopt_cache_interval": 2}, "sdopt_cache_interval"),
    ],
)
def test_bad_input_is_422_naming_the_field(tiny_pipeline, path, body, field):
    with running_server(tiny_pipeline, start_worker=False) as (url, app):
        response = httpx.post(url + path, json={"prompt": "x", "width": 64, "height": 64, "steps": 4, **body})
        assert response.status_code == 422, response.text
        assert field in response.text
        assert app.state.worker.queue_depth == 0  # refused before taking a queue slot


def test_an_image_past_pils_own_pixel_limit_is_called_too_large_not_unreadable():
    """Image.open raises DecompressionBombError for a picture over ~179 megapixels, before the server's own size check:
    the 422 said "not an image PIL can read" of a valid 20000x20000 PNG, not that it is too large."""
    import struct
    import zlib

    from sdopt.serve.errors import RequestError
    from sdopt.serve.images import read_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # A PNG's header and an empty IDAT: Image.open reads the size, and the pixels are never needed
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"")
    with pytest.raises(RequestError, match="more than 16777216 pixels"):
        read_image(data, "init_images", 2**20, 16777216)


def test_mask_of_another_size_and_oversized_body_are_refused(tiny_pipeline):
    from PIL import Image

    with running_server(tiny_pipeline, start_worker=False, max_body_bytes=200_000) as (url, _):
        init, mask = b64png(Image.new("RGB", (64, 64))), b64png(Image.new("L", (32, 32)))
        response = httpx.post(url + "/sdapi/v1/img2img", json={"prompt": "x", **SMALL, "init_images": [init], "mask": mask})
        assert response.status_code == 422 and "32x32" in response.text and "64x64" in response.text
        response = httpx.post(url + "/v1/jobs", content=b'{"prompt": "' + b"x" * 300_000 + b'"}', headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "send smaller images" in response.json()["detail"]
        # On OpenAI's routes in OpenAI's shape: its SDK reads the message from nowhere else ("Error code: 413" alone).
        response = httpx.post(url + "/v1/images/edits", files={"image": ("a.png", b"x" * 300_000, "image/png")}, data={"prompt": "x"})
        assert response.status_code == 413 and "send smaller images" in response.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_413(tiny_pipeline):
    """A body sent without Content-Length (chunked) over the limit was cut off by the limit, but FastAPI's body reader
    caught the limit's exception as its own parse error: 422 "JSON decode error" on JSON routes, 400 on OpenAI's form
    route, where docs/serve.md promises 413 for a body over the limit."""
    def chunks(total: int, first: bytes = b""):
        yield first
        for _ in range(total // 50_000):
            yield b"x" * 50_000

    with running_server(tiny_pipeline, start_worker=False, max_body_bytes=200_000) as (url, _):
        response = httpx.post(url + "/v1/jobs", content=chunks(300_000, b'{"prompt": "'), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "send smaller images" in response.json()["detail"]
        boundary = "b0undary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        response = httpx.post(url + "/v1/images/edits", content=chunks(300_000, head),
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413 and "send smaller images" in response.json()["error"]["message"]
        assert httpx.get(url + "/health").json()["status"] == "worker down"  # and the server answers on (its worker never started)


# --- failures ---------------------------------------------------------------------------------
def test_a_failing_generate_fails_its_job_and_a_crash_restarts_the_worker(tiny_pipeline, caplog):
    """... and the error logged names the request (X-Request-ID, the client's where it sent one): nothing tied a logged
    failure to a request, nor a client's 500 to a log line (qa55's list)."""
    with running_server(Faulty(tiny_pipeline)) as (url, app):
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "fail", **SMALL}, timeout=60,
                              headers={"X-Request-ID": "client-7"})
        assert response.status_code == 500 and "the backend fell over" in response.text
        assert response.headers["x-request-id"] == "client-7"
        assert "generate failed (request_id=client-7)" in caplog.text
        made = httpx.get(url + "/health", headers={"X-Request-ID": "a spaced id " + "x" * 200}).headers["x-request-id"]
        assert len(made) == 32 and made != httpx.get(url + "/health").headers["x-request-id"]  # a new one, each request
        big = httpx.post(url + "/sdapi/v1/txt2img", content=b"x" * (app.state.settings.max_body_bytes + 1),
                         headers={"Content-Type": "application/json", "X-Request-ID": "big-1"})
        assert big.status_code == 413 and big.headers["x-request-id"] == "big-1"  # the body limit's answer too
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "crash", **SMALL}, timeout=60)
        assert response.status_code == 500 and "worker crashed" in response.text
        wait_for(lambda: app.state.worker.alive, timeout=10)
        response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "fine", **SMALL}, timeout=60)
        assert response.status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert "sdopt_worker_restarts_total 1" in metrics
        assert 'sdopt_jobs_total{outcome="failed"} 2' in metrics and 'sdopt_jobs_total{outcome="succeeded"} 1' in metrics


def test_health_answers_503_while_every_call_fails_on_the_servers_side(tiny_pipeline):
    """A worker alive but failing every call (a lost GPU, a backend in a bad state) was "ok" with a 200: a probe could
    never restart it (walk qa55). Three server-side failures in a row make /health 503 with the last reason; a call that
    runs makes it 200 again; a request's own error (422) does not count."""
    from sdopt.serve.worker import FAILING_CALLS

    with running_server(Faulty(tiny_pipeline)) as (url, app):
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 0}, timeout=60).status_code == 422
        for n in range(FAILING_CALLS):
            assert httpx.get(url + "/health").status_code == 200
            assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "fail", **SMALL}, timeout=60).status_code == 500
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == (
            f"failing: the last {FAILING_CALLS} calls failed, the last with generation failed (RuntimeError: the backend fell over)")
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "fine", **SMALL}, timeout=60).status_code == 200
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_health_tells_the_last_failure_only_to_a_caller_with_the_credentials(tiny_pipeline):
    """/health is open without the key, and its 503 quoted the last failure's exception text (paths outside the server's
    folders, whatever a backend's message repeats of a request) to anyone who reaches the port (walk qa95)."""
    from sdopt.serve.worker import FAILING_CALLS

    with running_server(Faulty(tiny_pipeline), api_key=KEY) as (url, _):
        key = {"Authorization": f"Bearer {KEY}"}
        for _ in range(FAILING_CALLS):
            assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "fail", **SMALL}, headers=key, timeout=60).status_code == 500
        anyone, keyed = httpx.get(url + "/health"), httpx.get(url + "/health", headers=key)
    assert anyone.status_code == keyed.status_code == 503
    assert "fell over" not in anyone.text and anyone.json()["status"].startswith(f"failing: the last {FAILING_CALLS} calls failed"), anyone.text
    assert keyed.json()["status"].endswith("the last with generation failed (RuntimeError: the backend fell over)"), keyed.text


def test_a_nan_image_is_the_servers_fault_and_counts_for_health(tiny_pipeline, monkeypatch):
    """An image that came out NaN from a request the checks passed (guidance is at most 50: an fp16 VAE that overflows)
    answered 422, the client's fault, though no change to the request could help; and /health never saw it (walk qa95)."""
    from sdopt.serve.worker import FAILING_CALLS

    decoder = tiny_pipeline.components["vae_decoder"]
    monkeypatch.setitem(tiny_pipeline.components, "vae_decoder", lambda **kw: {"sample": decoder(**kw)["sample"] * np.nan})
    with running_server(tiny_pipeline) as (url, _):
        for _ in range(FAILING_CALLS):
            response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}, timeout=60)
            assert response.status_code == 500 and "no usable image" in response.text, response.text
        assert httpx.get(url + "/health").status_code == 503


def test_a_broken_image_in_a_shared_call_fails_only_the_job_it_is_of(tiny_pipeline, monkeypatch):
    """Two clients' jobs run as one call, and the second client's image came out NaN: both jobs failed, the first client
    told of "image 1", the other's. Now the first gets its image and the second is told of its own image 0."""
    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    decoder = tiny_pipeline.components["vae_decoder"]

    def second_row_nan(**kw):
        sample = decoder(**kw)["sample"].copy()
        sample[1:2] = np.nan
        return {"sample": sample}

    monkeypatch.setitem(tiny_pipeline.components, "vae_decoder", second_row_nan)
    worker = Worker(tiny_pipeline, max_batch=8)
    a = worker.submit(J.Job(spec=J.JobSpec(prompt="a", **SMALL)))
    b = worker.submit(J.Job(spec=J.JobSpec(prompt="b", **SMALL)))
    worker.start()
    try:
        for job in (a, b):
            job.future.result(timeout=120)
    finally:
        worker.stop()
    assert (a.batch_size, b.batch_size) == (2, 2)  # one call
    assert a.status == "succeeded" and len(a.images) == 1, a.error
    assert b.status == "failed" and b.error == ("the generation produced no usable image: "
                                                "image 0: the VAE decoder gave NaN or inf pixels (saved, they would be black)"), b.error


@pytest.mark.parametrize("relative", [False, True])
def test_a_broken_lora_file_in_the_servers_folder_is_the_servers_fault(tiny_pipeline, tmp_path, monkeypatch, relative):
    """A file in --lora-dir that cannot be read is the operator's to fix: it answered 422, the client's fault, telling the
    client to "give a .safetensors LoRA file" (walk qa95). It does not make /health fail: a restart reads the same file.
    A relative --lora-dir loras too, whose files' errors quote loras/bad.safetensors."""
    pytest.importorskip("peft")
    from sdopt.serve.worker import FAILING_CALLS

    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "bad.safetensors").write_bytes(b"not a safetensors file")
    monkeypatch.chdir(tmp_path)
    with running_server(tiny_pipeline, lora_dir="loras" if relative else str(tmp_path / "loras")) as (url, _):
        for _ in range(FAILING_CALLS):
            response = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "a <lora:bad:1>", **SMALL}, timeout=60)
            assert response.status_code == 500 and "bad.safetensors" in response.text, response.text
            assert "its operator must replace it" in response.text, response.text
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 0}, timeout=60).status_code == 422


def test_an_empty_lora_file_in_the_servers_folder_is_the_servers_fault_too(tiny_pipeline, tmp_path):
    """An empty file in --lora-dir (a copy cut short) is refused before the call, by the loop's own check: it answered
    422, the client's fault, with "Give the LoRA file again" and loc body, where a file that cannot be read as
    safetensors answers 500 saying the operator must replace it. Both are the operator's now, in both APIs."""
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "empty.safetensors").write_bytes(b"")
    with running_server(tiny_pipeline, lora_dir=str(tmp_path / "loras")) as (url, app):
        a1111 = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "a <lora:empty:1>", **SMALL}, timeout=60)
        openai = httpx.post(url + "/v1/images/generations", json={"prompt": "a <lora:empty:1>", "size": "64x64"}, timeout=60)
        assert httpx.get(url + "/health").status_code == 200  # a restart reads the same file
        assert app.state.worker.queue_depth == 0
    for answer in (a1111, openai):
        assert answer.status_code == 500, answer.text
        assert "loras/empty.safetensors is empty (0 bytes)" in answer.text and "its operator must replace it" in answer.text, answer.text
        assert str(tmp_path) not in answer.text, answer.text
    assert openai.json()["error"]["type"] == "server_error", openai.text


# --- progress: events, A1111 progress, metrics ----------------------------------------------
def test_events_stream_queued_steps_previews_and_done(tiny_pipeline):
    with running_server(SlowSteps(tiny_pipeline, 0.3)) as (url, _):
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL}).json()
        events = []
        with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        kinds = [e["event"] for e in events]
        assert kinds[0] in ("queued", "started") and kinds[-1] == "done"
        steps = [e for e in events if e["event"] == "step"]
        # Every UNet call is a step event (the tiny model's PNDM makes 5 calls for 4 steps).
        assert steps[-1]["steps"] >= 4 and [e["step"] for e in steps] == list(range(1, steps[-1]["steps"] + 1))
        previews = [e["preview"] for e in steps if "preview" in e]
        assert previews and png(previews[0].split(",", 1)[1]).size[0] <= 64
        assert events[-1]["status"] == "succeeded"


def test_a_silent_event_stream_sends_a_keepalive_comment(tiny_pipeline, monkeypatch):
    """A job queued behind a long one sends no event for minutes, and a proxy's read timeout (nginx's 60 s) cut the
    silent stream. A comment line goes out when nothing else did for KEEPALIVE_S (SSE clients ignore comments)."""
    import threading

    from sdopt.serve import api_native

    monkeypatch.setattr(api_native, "KEEPALIVE_S", 0.3)
    with running_server(tiny_pipeline, start_worker=False) as (url, app):  # the job stays queued: nothing changes
        job = httpx.post(url + "/v1/jobs", json={"prompt": "x", **SMALL}).json()
        lines: list[str] = []

        def read() -> None:
            with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=10) as stream:
                for line in stream.iter_lines():
                    lines.append(line)
                    if lines.count(": keepalive") >= 2:
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=10)
        app.state.worker.start()
    assert lines.count(": keepalive") >= 2, lines
    assert lines[0] == "event: queued", lines  # the events first, the comments only in the silence after them


# AUTOMATIC1111's State.dict() (modules/shared_state.py): progress's state, whose keys clients index.
STATE_KEYS = {"skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no", "sampling_step", "sampling_steps"}


def test_a1111_progress_and_interrupt_follow_the_running_job(tiny_pipeline):
    import threading

    with running_server(SlowSteps(tiny_pipeline, 0.2)) as (url, _):
        idle = httpx.get(url + "/sdapi/v1/progress").json()
        assert STATE_KEYS <= set(idle["state"]) and idle["current_image"] is None and idle["eta_relative"] == 0
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 40}, timeout=60)))
        thread.start()
        progress = wait_for(lambda: (lambda p: p if p["state"]["sampling_step"] >= 2 else None)(httpx.get(url + "/sdapi/v1/progress").json()))
        assert progress["state"]["sampling_steps"] == 40 and 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
        assert STATE_KEYS <= set(progress["state"]) and isinstance(progress["current_image"], str)
        assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200
        thread.join(30)
        response = answer["r"]
        assert response.status_code == 200
        info = json.loads(response.json()["info"])
        assert info["interrupted"] is True and response.json()["images"] == []


def test_a_jobs_eta_counts_down_while_a_step_runs(monkeypatch):
    """The ETA (AUTOMATIC1111's eta_relative, the native job's eta_seconds) was paced by the time up to now, so it grew
    while a step ran: polled every 2 s during sd15's 10 s steps on a CPU it read 12, 14, 16, 18, 20 s at step 1 of 2."""
    from sdopt.serve import jobs as J

    now = [1000.0]
    monkeypatch.setattr(J.time, "time", lambda: now[0])
    job = J.Job(spec=J.JobSpec(prompt="x", **SMALL))
    job.start(1, 4)
    now[0] = 1010.0
    job.advance(1, 4)  # a step took 10 s: three more to go
    assert job.eta_seconds() == 30
    now[0] = 1016.0
    assert job.eta_seconds() == 24  # 6 s into the next step; was 48 (16 s a step so far)
    now[0] = 1100.0
    assert job.eta_seconds() == 0  # slower than the pace so far: not below nothing left


def test_a1111_progress_follows_the_batch_not_a_job_cancelled_out_of_it(tiny_pipeline):
    """A native job cancelled out of a shared call while its batch-mate ran on: progress without id_task reported the
    cancelled job, "interrupted" and frozen at its step, as if the generation had stopped."""
    with running_server(SlowSteps(tiny_pipeline, 0.1), start_worker=False) as (url, app):
        ids = [httpx.post(url + "/v1/jobs", json={"prompt": p, **SMALL, "steps": 30}).json()["id"] for p in ("a", "b")]
        worker = app.state.worker
        worker.start()
        wait_for(lambda: worker.jobs[ids[1]].step >= 1)
        first, other = worker.current
        assert httpx.delete(f"{url}/v1/jobs/{first.id}").json()["cancelled"]
        state = httpx.get(url + "/sdapi/v1/progress").json()["state"]
        assert state["interrupted"] is False and state["sampling_step"] >= 1
        assert state["job_count"] == 1  # the cancelled one no longer counts
        # AUTOMATIC1111's label: the running job's id let any client that polled progress read that job (another
        # client's prompt and images, /v1/jobs/ID) and cancel it
        assert state["job"] == "Batch 1 out of 1" and other.id not in httpx.get(url + "/sdapi/v1/progress").text
        assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200


def test_an_interrupted_hires_request_stops_all_its_second_passes(tiny_pipeline):
    """batch_size 4 with --max-batch 2: the second pass is two calls. An interrupt during the first of them cancels
    the other too (it ran to its end and its images were thrown away, the QA sweep saw)."""
    import threading

    with running_server(SlowSteps(tiny_pipeline, 0.1), max_batch=2) as (url, app):
        answer = {}
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "batch_size": 4, "enable_hr": True, "hr_scale": 1.5,
                "hr_second_pass_steps": 30, "denoising_strength": 1.0}
        thread = threading.Thread(target=lambda: answer.update(r=httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120)))
        thread.start()
        wait_for(lambda: any(j.spec.width == 96 and j.step >= 2 for j in list(app.state.worker.jobs.values())), timeout=90)
        assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200
        thread.join(60)
        seconds = [j for j in app.state.worker.jobs.values() if j.spec.width == 96]
    info = json.loads(answer["r"].json()["info"])
    assert info["interrupted"] is True and answer["r"].json()["images"] == []
    assert len(seconds) == 4 and all(j.status == "cancelled" for j in seconds), [(j.status, j.step) for j in seconds]
    assert max(j.step for j in seconds) < 30  # none ran to its end


def test_hires_second_pass_keeps_the_prompts_loras_and_checks_hr_prompts_first(tiny_pipeline, tmp_path):
    pytest.importorskip("peft")
    from sdopt.zoo.lora import write_lora

    folder = tmp_path / "loras"
    write_lora(tiny_pipeline.folder, folder / "style.safetensors")
    body = {"prompt": "a cat <lora:style:1>", **SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2}
    with running_server(tiny_pipeline, lora_dir=str(folder)) as (url, app):
        info = json.loads(httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120).json()["info"])
        second = app.state.worker.jobs[info["sdopt_hires"]["task_ids"][0]]
        own = json.loads(httpx.post(url + "/sdapi/v1/txt2img", json={**body, "hr_prompt": "a dog"}, timeout=120).json()["info"])
        plain = app.state.worker.jobs[own["sdopt_hires"]["task_ids"][0]]
        started = time.monotonic()
        bad = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "steps": 40, "hr_prompt": "b <lora:missing:1>"}, timeout=120)
        refused_in = time.monotonic() - started
    assert second.spec.loras == {str(folder / "style.safetensors"): 1.0}  # the first pass's (it ran without them)
    assert plain.spec.loras is None  # hr_prompt without tags: none, as AUTOMATIC1111
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "hr_prompt"] and refused_in < 5


def test_metrics_count_jobs_images_steps_and_batches(tiny_pipeline):
    with running_server(tiny_pipeline) as (url, _):
        assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "batch_size": 2}, timeout=60).status_code == 200
        text = httpx.get(url + "/metrics").text
    assert "sdopt_images_generated_total 2" in text
    assert 'sdopt_jobs_total{outcome="succeeded"} 1' in text
    assert "sdopt_step_seconds_count 4" in text
    assert 'sdopt_batch_images_bucket{le="2"} 1' in text
    assert "sdopt_queue_depth 0" in text



def test_the_page_calls_the_api_by_relative_paths(tiny_pipeline):
    """Behind a proxy serving the page under a prefix (https://host/sd/), its fetch("/v1/jobs") left the prefix: every
    call reached the proxy's root, not this server."""
    with running_server(tiny_pipeline) as (url, _):
        page = httpx.get(url + "/").text
    called = re.findall(r"""fetch\(["'`]([^"'`]*)""", page)
    assert len(called) >= 6 and all(not path.startswith("/") and "//" not in path for path in called), called
    # The seed box started at 0, so Generate pressed again made the same image (walk qa59); empty is random, as its
    # placeholder says (AUTOMATIC1111's -1).
    assert re.search(r'<input id="seed" [^>]*value=""[^>]*placeholder="random when empty"', page)


def test_the_page_takes_no_seed_a_javascript_number_cannot_hold(tiny_pipeline):
    """The seed box took any integer and the page sent Number(its text): 9007199254740993 (2^53 + 1) made the image of
    9007199254740992 without a word, and 9223372036854775807, the API's own top, was refused as "less than or equal to
    9223372036854775807". Its max is now the largest integer a JavaScript number holds exactly: the browser says so."""
    with running_server(tiny_pipeline) as (url, _):
        page = httpx.get(url + "/").text
    seed_box = re.search(r'<input id="seed" [^>]*>', page).group(0)
    top = re.search(r'max="(\d+)"', seed_box)
    assert top and int(top.group(1)) <= 2**53 - 1, seed_box


def test_a_served_name_that_looks_like_a_page_placeholder_is_shown_as_written(tiny_pipeline):
    """The page's placeholders were filled in one after another, the model's name first: a --name holding "{{AUTH}}" or
    "{{SIDE}}" had those filled in too (the page titled "bearer 64"). One pass fills the page's own alone."""
    with running_server(tiny_pipeline, name="{{AUTH}} {{SIDE}}", api_key="k") as (url, _):
        page = httpx.get(url + "/").text
    assert "<title>sdopt serve: {{AUTH}} {{SIDE}}</title>" in page, page[:400]
    assert "{{MODEL}}" not in page and "{{STEPS}}" not in page


def test_every_field_of_the_page_has_a_name_and_its_status_is_announced(tiny_pipeline):
    """A screen reader read the height box as a bare "spin button" (one <label> named the width alone), the progress bar
    without a name, and never said the status line's news (done, a refusal): nothing marked it a live region."""
    from html.parser import HTMLParser

    with running_server(tiny_pipeline) as (url, _):
        page = httpx.get(url + "/").text

    class Fields(HTMLParser):
        def __init__(self):
            super().__init__()
            self.fields, self.labelled, self.status = [], set(), {}

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "label" and attrs.get("for"):
                self.labelled.add(attrs["for"])
            if tag in ("input", "textarea", "select", "progress"):
                self.fields.append(attrs)
            if attrs.get("id") == "status":
                self.status = attrs

    parsed = Fields()
    parsed.feed(page)
    nameless = [f.get("id") for f in parsed.fields if f.get("id") not in parsed.labelled and not f.get("aria-label")]
    assert len(parsed.fields) >= 8 and nameless == [], nameless
    assert parsed.status.get("role") == "status" or parsed.status.get("aria-live") in ("polite", "assertive"), parsed.status


# --- the page, in a real browser -------------------------------------------------------------
def test_page_in_headless_chromium_generates_and_shows_progress(tiny_pipeline, tmp_path):
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    with running_server(SlowSteps(tiny_pipeline, 0.1)) as (url, _), Browser() as browser:
        browser.open(url + "/?autorun=1&width=64&height=64&steps=6&seed=3")
        status = "document.getElementById('status') && document.getElementById('status').textContent"
        text = wait_for(lambda: (lambda s: s if s and (s.startswith("done") or "error" in s or "failed" in s) else None)(browser.evaluate(status)), timeout=120, every=0.1)
        assert text.startswith("done: 1 image(s), seed 3"), text
        # Every step reached the page over the events stream (PNDM: 7 UNet calls for 6 steps).
        assert int(browser.evaluate("document.getElementById('bar').dataset.stepsSeen")) >= 6
        assert browser.evaluate("document.querySelectorAll('#images img').length") == 1
        assert browser.evaluate("document.querySelector('#images img').naturalWidth") == 64
        assert "Seed: 3, Size: 64x64" in browser.evaluate("document.getElementById('infotext').textContent")  # its parameters
        # Saved by a link that names the file (a data: URL's own name is "download.png"): the same PNG, parameters and all.
        assert browser.evaluate("document.querySelector('#images a').download") == "tiny-3.png"
        assert browser.evaluate("document.querySelector('#images a').href === document.querySelector('#images img').src")
        browser.screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000


def test_page_shows_the_preview_at_the_image_s_shape_and_not_beside_the_image(tiny_pipeline):
    """The step previews of a 128x64 image were squeezed into a 128-px square, and the last one stayed above the
    finished image, a blurred second picture beside the one made."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    with running_server(SlowSteps(tiny_pipeline, 0.3)) as (url, _), Browser() as browser:
        browser.open(url + "/?autorun=1&width=128&height=64&steps=6&seed=3")
        shown = "(p => p && !p.hidden && p.naturalWidth > 0)(document.getElementById('preview'))"
        wait_for(lambda: browser.evaluate(shown), timeout=120, every=0.05)
        # contain: the picture drawn at the preview's own 2:1 in its box (object-fit: fill, the default, stretched it)
        assert browser.evaluate("getComputedStyle(document.getElementById('preview')).objectFit") == "contain"
        status = "document.getElementById('status').textContent"
        text = wait_for(lambda: (lambda s: s if s.startswith("done") or "error" in s or "failed" in s else None)(browser.evaluate(status)), timeout=120)
        assert text.startswith("done: 1 image(s)"), text
        assert browser.evaluate("document.getElementById('preview').hidden") is True


def test_page_follows_a_job_again_when_its_event_stream_is_cut(tiny_pipeline):
    """A stream cut before its done event (a proxy's read timeout while the job waited its turn, a network blip) ended
    the page's wait: it read the job once, said "running" in red and re-enabled Generate while the job went on, and
    its image never came to the page."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    # The first events stream the page opens ends after its first chunk, as a proxy that gave up on it would end it.
    cut_first_stream = """(() => { const real = window.fetch; let cuts = 0;
      window.fetch = async (url, options) => {
        const res = await real(url, options);
        if (!String(url).endsWith("/events") || cuts++) return res;
        const reader = res.body.getReader(); const first = await reader.read(); reader.cancel();
        return new Response(new ReadableStream({start(c) { if (!first.done) c.enqueue(first.value); c.close(); }}),
                            {status: res.status, headers: res.headers});
      };
    })()"""
    with running_server(SlowSteps(tiny_pipeline, 0.2)) as (url, _), Browser() as browser:
        browser.open(url + "/")
        wait_for(lambda: browser.evaluate("!!document.getElementById('go') && document.readyState === 'complete'"), timeout=20)
        browser.evaluate(cut_first_stream)
        browser.evaluate("document.getElementById('steps').value = 6; document.getElementById('go').click()")
        ended = "(s => !document.getElementById('go').disabled && s !== 'idle' ? s : null)(document.getElementById('status').textContent)"
        text = wait_for(lambda: browser.evaluate(ended), timeout=120, every=0.05)
        assert text.startswith("done: 1 image(s)"), text
        assert browser.evaluate("document.querySelectorAll('#images img').length") == 1


def test_page_follows_a_job_again_when_its_event_stream_breaks_off(tiny_pipeline):
    """A proxy that gives up on a stream mostly breaks it off (no chunked end: the browser's read rejects, "network
    error") rather than ending it cleanly: the page said the server could not be reached while the job went on."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    break_first_stream = """(() => { const real = window.fetch; let cuts = 0;
      window.fetch = async (url, options) => {
        const res = await real(url, options);
        if (!String(url).endsWith("/events") || cuts++) return res;
        const reader = res.body.getReader(); const first = await reader.read(); reader.cancel();
        return new Response(new ReadableStream({start(c) { if (!first.done) c.enqueue(first.value); c.error(new TypeError("network error")); }}),
                            {status: res.status, headers: res.headers});
      };
    })()"""
    with running_server(SlowSteps(tiny_pipeline, 0.2)) as (url, _), Browser() as browser:
        browser.open(url + "/")
        wait_for(lambda: browser.evaluate("!!document.getElementById('go') && document.readyState === 'complete'"), timeout=20)
        browser.evaluate(break_first_stream)
        browser.evaluate("document.getElementById('steps').value = 6; document.getElementById('go').click()")
        ended = "(s => !document.getElementById('go').disabled && s !== 'idle' ? s : null)(document.getElementById('status').textContent)"
        text = wait_for(lambda: browser.evaluate(ended), timeout=120, every=0.05)
        assert text.startswith("done: 1 image(s)"), text
        assert browser.evaluate("document.querySelectorAll('#images img').length") == 1


def test_page_behind_an_api_key_lists_the_samplers_once_the_key_is_typed(tiny_pipeline):
    """The page fetched the sampler list once, at load, before anyone could type the key: behind --api-key it was
    refused (401) and the Scheduler menu kept only "the model's own" for good, whatever key was typed after."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    options = "document.querySelectorAll('#scheduler option').length"
    with running_server(tiny_pipeline, api_key="page-key") as (url, _), Browser() as browser:
        browser.open(url + "/")
        wait_for(lambda: browser.evaluate("!!document.getElementById('scheduler') && document.readyState === 'complete'"), timeout=20)
        time.sleep(0.2)  # the list's fetch at load: refused, no key yet
        assert browser.evaluate(options) == 1
        browser.evaluate("(k => { k.value = 'page-key'; k.dispatchEvent(new Event('change')); })(document.getElementById('apikey'))")
        assert wait_for(lambda: browser.evaluate(options) > 1, timeout=10, every=0.05)
        assert "Euler a" in browser.evaluate("[...document.querySelectorAll('#scheduler option')].map((o) => o.textContent)")


def test_page_behind_an_api_key_says_to_type_it_in_its_box(tiny_pipeline):
    """Generate pressed without the key (or with a wrong one) said "401: missing or wrong credentials: send
    Authorization: Bearer KEY": advice for an API client, which a person in a browser cannot follow."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    status = "document.getElementById('status').className === 'error' && document.getElementById('status').textContent"
    with running_server(tiny_pipeline, api_key="page-key") as (url, _), Browser() as browser:
        browser.open(url + "/?autorun=1")
        assert wait_for(lambda: browser.evaluate(status), timeout=20) == "401: no API key: type the server's API key in the box above"
        browser.evaluate("document.getElementById('apikey').value = 'not-it'; document.getElementById('status').className = ''")
        browser.evaluate("document.getElementById('go').click()")
        assert wait_for(lambda: browser.evaluate(status), timeout=20) == "401: wrong API key: type the server's API key in the box above"


def test_page_shows_a_refusal_and_a_server_down_as_sentences(tiny_pipeline):
    """A 422 showed as FastAPI's JSON (`422: [{"loc":["body","width"],"msg":...,"type":"value_error"}]`) and a stopped
    server as `TypeError: Failed to fetch`; the page stays usable after either."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    status = "document.getElementById('status').className === 'error' && document.getElementById('status').textContent"
    with Browser() as browser:
        with running_server(tiny_pipeline, max_pixels=64 * 64) as (url, _):
            browser.open(url + "/?width=128&height=64&autorun=1")  # set once the page has the model's size
            assert wait_for(lambda: browser.evaluate(status), timeout=10) == \
                "422: width: 128x64 is more than this server's 4096 pixels (--max-pixels)"
        browser.evaluate("document.getElementById('go').click()")
        # The 422's line stays until the new call has failed: wait for another (it was read at once, on a busy machine)
        text = wait_for(lambda: (lambda t: t if t and not t.startswith("422") else None)(browser.evaluate(status)), timeout=10)
        assert text.startswith("the server cannot be reached (") and "is it running?" in text, text
        assert browser.evaluate("document.getElementById('go').disabled") is False


def test_page_fits_a_phone_width(tiny_pipeline):
    """At 320 px (a small phone) the form was 407 px wide, the fields cut at the screen's edge (the grid's second column
    could not shrink below its inputs' own width, the textareas were 100% plus their border), and an image wider than the
    screen was shown at its own width: the page scrolled sideways (the CSS; an image appended as the page appends one)."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    with running_server(tiny_pipeline) as (url, _), Browser() as browser:
        browser.open("about:blank")
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": True},
                     session=browser.session)
        browser.send("Page.navigate", {"url": url + "/"}, session=browser.session)
        wait_for(lambda: browser.evaluate("!!document.getElementById('images') && document.readyState === 'complete'"), timeout=20)
        # A 1024-px result, shown as the page shows one (img.width = the image's width), without making one here.
        browser.evaluate("(img => { img.width = 1024; img.height = 1024; document.getElementById('images').appendChild(img); })"
                         "(document.createElement('img'))")
        scroll, client = browser.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll <= client, (scroll, client)
        assert browser.evaluate("document.getElementById('prompt').getBoundingClientRect().right") <= client
        assert browser.evaluate("document.querySelector('#images img').getBoundingClientRect().right") <= client


# --- the command line ------------------------------------------------------------------------
def test_the_serving_line_gives_an_ipv6_address_in_brackets(tiny_model, capsys, monkeypatch):
    """`sdopt serve --host ::1` said 'serving ... on http://::1:7860/', a URL no browser or curl opens."""
    import sdopt.serve.server as server
    from sdopt.cli import main

    class Started:
        def run(self):
            pass

    def started_at(app, host, port, on_started=None, **kwargs):
        on_started(port)
        return Started()

    monkeypatch.setattr(server, "http_server", started_at)
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)  # a machine without IPv6 runs it too
    assert main(["serve", str(tiny_model), "--host", "::1", "--port", "17861"]) == 0
    assert "on http://[::1]:17861/ (API docs" in capsys.readouterr().err


def test_a_port_taken_during_the_load_is_one_line_and_no_serving_banner(tiny_model, capsys, monkeypatch):
    """The port is checked before the (slow) load; one taken meanwhile made uvicorn exit 3 after sdopt had printed
    "serving ... on" that port. Now: exit 2, saying so, and the banner only once the port is open."""
    import socket

    import sdopt
    from sdopt.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    real_load, other = sdopt.load, socket.socket()

    def load_while_another_takes_the_port(*args, **kwargs):
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        return real_load(*args, **kwargs)

    monkeypatch.setattr(sdopt, "load", load_while_another_takes_the_port)
    with other:
        assert main(["serve", str(tiny_model), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "another process took the port while the model loaded; pass another --port" in err and "serving tiny" not in err
    assert "error while attempting to bind" not in err  # uvicorn's own line before it: said once, by sdopt (qa70)


def test_a_port_taken_during_the_load_is_one_line_where_uvicorn_exits_1(tiny_model, capsys, monkeypatch):
    """uvicorn 0.29-0.36 (pyproject allows >=0.29) exit 1, not 3, when they cannot bind: the SystemExit(1) went
    through sdopt, which ended 1 with no line of its own. Stood in for by a server that exits as those do."""
    from sdopt.cli import main
    from sdopt.serve import server as serve_server

    class ExitsAsOldUvicorn:
        started = False

        def run(self):
            raise SystemExit(1)

    monkeypatch.setattr(serve_server, "http_server", lambda *args, **kwargs: ExitsAsOldUvicorn())
    assert main(["serve", str(tiny_model), "--port", "0"]) == 2
    assert "another process took the port while the model loaded" in capsys.readouterr().err


def test_serve_command_refuses_a_busy_port_and_bad_options_before_loading(tiny_model, capsys):
    import socket

    from sdopt.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_model), "--port", str(port)]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--api-auth", "no-colon"]) == 2
    assert "USER:PASS" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--port", "99999"]) == 2  # was an OverflowError traceback from bind()
    assert "--port 99999" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--job-timeout", "0"]) == 2
    assert "--job-timeout 0" in (err := capsys.readouterr().err) and "inf for no timeout" in err  # what to give for none
    assert main(["serve", str(tiny_model / "missing")]) == 2  # said alone: it printed "loading ..." first
    assert "does not exist" in (err := capsys.readouterr().err) and "loading" not in err
    a_file = next(path for path in tiny_model.iterdir() if path.is_file())
    assert main(["serve", str(tiny_model), "--image-dir", str(a_file)]) == 2
    assert "--image-dir" in (err := capsys.readouterr().err) and "not a folder" in err



def test_an_image_dir_that_cannot_be_written_is_said_before_the_load(tiny_model, tmp_path, capsys, monkeypatch):
    """An --image-dir this user cannot write was refused only after the model had loaded (minutes for SDXL). Root writes
    through chmod, so the folder is one that cannot be made (under a file), refused the same way."""
    import sdopt
    from sdopt.cli import main

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --image-dir was checked")

    monkeypatch.setattr(sdopt, "load", load)
    (tmp_path / "a-file").write_text("")
    assert main(["serve", str(tiny_model), "--port", "0", "--image-dir", str(tmp_path / "a-file" / "images")]) == 2
    err = capsys.readouterr().err
    assert "--image-dir" in err and "give a folder this user can write" in err and "loading" not in err

@pytest.mark.parametrize("flags", [["--replicas", "1"], ["--autoscale", "1:2"], ["--cpus-per-replica", "0"], ["--gpus-per-replica", "0"]])
def test_ray_serve_scaling_flags_without_ray_are_refused(tmp_path, capsys, flags):
    """--gpus-per-replica 0 without --ray started the server, the flag dropped without a word, while --cpus-per-replica 0
    was refused: each of them is Ray Serve's, and is said whatever its value."""
    from sdopt.cli import main

    assert main(["serve", str(tmp_path / "any-model"), *flags]) == 2
    assert "go with --ray [ADDRESS]" in capsys.readouterr().err


def test_serve_command_takes_the_key_from_the_environment(tiny_model, monkeypatch):
    import sdopt.serve.server as server
    from sdopt.cli import main

    seen = {}
    monkeypatch.setattr(server, "serve", lambda artifact, settings, options, **http: seen.update(settings=settings, options=options))
    monkeypatch.setenv("SDOPT_API_KEY", "from-env")
    assert main(["serve", str(tiny_model), "--max-batch", "8"]) == 0
    assert seen["settings"].api_key == "from-env" and seen["settings"].max_batch == 8
    assert seen["options"] == {"device": "cpu", "precision": None}
    # A PyTorch checkpoint served with its shallow UNet branch, so requests may ask for cache_interval (no flag did it)
    assert main(["serve", str(tiny_model), "--deep-cache"]) == 0 and seen["options"]["deep_cache"] == 1
    assert main(["serve", str(tiny_model), "--deep-cache", "3"]) == 0 and seen["options"]["deep_cache"] == 3
    assert main(["serve", str(tiny_model), "--threads", "1"]) == 0 and seen["options"]["threads"] == 1


def test_the_servers_requests_are_answered_in_field_names_not_sdopt_serves_flags(monkeypatch):
    """Under `sdopt serve` (cli.main turns errors.command_line on) an HTTP client's cache_interval was refused with
    "--cache-interval 2 ... ask for --cache-interval 1": uvicorn's event loop copies the context it starts in."""
    from types import SimpleNamespace

    import uvicorn

    from sdopt.errors import argument, command_line
    from sdopt.serve.server import http_server

    seen = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: seen.append(argument("cache_interval", 2)))
    with command_line():
        http_server(SimpleNamespace(state=SimpleNamespace(worker=None)), "127.0.0.1", 0).run()
    assert seen == ["cache_interval=2"]


def test_no_color_keeps_the_access_log_plain_on_a_terminal(monkeypatch):
    """`NO_COLOR=1 sdopt serve --access-log` on a terminal still wrote uvicorn's ANSI colours (INFO, the request line, the
    status): uvicorn colours whenever stdout is a terminal, and sdopt did not pass NO_COLOR on."""
    import io
    import logging
    import sys
    from types import SimpleNamespace

    from sdopt.serve.server import http_server

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    app = SimpleNamespace(state=SimpleNamespace(worker=None))
    request = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:1", "GET", "/", "1.1", 200), None)
    coloured = {}
    for no_color in ("", "1"):
        monkeypatch.setenv("NO_COLOR", no_color)
        http_server(app, "127.0.0.1", 0, access_log=True)
        lines = [h.format(request) for h in logging.getLogger("uvicorn.access").handlers]
        coloured[no_color] = lines and any("\x1b[" in line for line in lines)
    assert coloured == {"": True, "1": False}, coloured


def test_the_access_log_leaves_out_an_image_links_signature(monkeypatch):
    """--access-log wrote each fetched image link whole, signature included: whoever reads the log (a log shipper, a
    colleague with journalctl) could fetch the images for an hour without the API key (walk qa95)."""
    import logging
    from types import SimpleNamespace

    from sdopt.serve.server import http_server

    monkeypatch.setenv("NO_COLOR", "1")
    http_server(SimpleNamespace(state=SimpleNamespace(worker=None)), "127.0.0.1", 0, access_log=True)
    link = "/v1/images/files/abc/0.png?expires=1765000000&signature=0123456789abcdef0123456789abcdef&k=1a2b3c4d"
    request = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:1", "GET", link, "1.1", 200), None)
    lines = [h.format(request) for h in logging.getLogger("uvicorn.access").handlers]
    assert lines and all("0123456789abcdef" not in line and "signature=-&k=1a2b3c4d" in line for line in lines), lines


def test_binding_beyond_loopback_without_credentials_warns(tiny_model, monkeypatch):
    from types import SimpleNamespace

    import sdopt.serve.server as server
    from sdopt.serve.settings import ServeSettings

    ran = {}
    monkeypatch.setattr(server, "http_server", lambda app, host, port, **http: SimpleNamespace(run=lambda: ran.update(host=host, port=port)))
    with pytest.warns(UserWarning, match="WITHOUT credentials"):
        server.serve(tiny_model, ServeSettings(host="0.0.0.0", port=0))
    assert ran == {"host": "0.0.0.0", "port": 0}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # with a key: no warning
        server.serve(tiny_model, ServeSettings(host="0.0.0.0", port=0, api_key="k"))



def test_serve_says_at_start_that_the_checkpoints_safety_checker_is_not_run(tiny_model, tmp_path, monkeypatch, capsys):
    """Whoever runs a service is who most needs to know its images are not filtered (Diffusers' pipeline runs SD 1.x's
    safety checker; sdopt never does): said once at start, of a checkpoint that ships one, not of one without."""
    import json
    import shutil
    from types import SimpleNamespace

    import sdopt.serve.server as server
    from sdopt.serve.settings import ServeSettings

    monkeypatch.setattr(server, "http_server", lambda app, host, port, **http: SimpleNamespace(run=lambda: None))
    server.serve(tiny_model, ServeSettings(port=0))
    assert "safety checker" not in capsys.readouterr().err
    folder = tmp_path / "sd15-like"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("sdopt.json"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}))
    server.serve(folder, ServeSettings(port=0))
    assert "note: the checkpoint's safety checker is not run: sdopt does not filter images" in capsys.readouterr().err


def test_serve_on_ray_says_at_start_that_the_checkpoints_safety_checker_is_not_run(tiny_model, tmp_path, monkeypatch, capsys):
    """README: "sdopt serve says so once at start"; sdopt serve --ray deployed the same unfiltered service and said nothing.
    Ray stood in for: the deployment starts, then Ctrl-C."""
    import contextlib
    import json
    import shutil
    import sys
    import types

    import sdopt.cluster.serve as cluster_serve
    from sdopt.serve.settings import ServeSettings

    folder = tmp_path / "sd15-like"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("sdopt.json"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}))
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(serve=types.SimpleNamespace(shutdown=lambda: None)))
    monkeypatch.setattr(cluster_serve, "cluster", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(cluster_serve, "start", lambda *args: None)
    monkeypatch.setattr(cluster_serve, "signal", types.SimpleNamespace(signal=lambda *args: None, SIGTERM=15))  # this module's only

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_serve, "time", types.SimpleNamespace(sleep=ctrl_c))
    cluster_serve.serve_on_ray(str(folder), ServeSettings(port=0), {}, cluster_serve.Scaling(), None)
    assert "note: the checkpoint's safety checker is not run: sdopt does not filter images" in capsys.readouterr().err


@pytest.mark.parametrize("stop, flags", [("SIGTERM", []), ("SIGHUP", ["--access-log"])])
def test_sdopt_serve_stopped_by_sigterm_exits_0(tiny_model, stop, flags):
    """systemd, docker and Kubernetes stop a service with SIGTERM: uvicorn raised it again once stopped, the command line
    turned it into "sdopt: interrupted", and the clean stop exited 130, a unit in the failed state. SIGHUP (the terminal
    closed) killed the process at once, dropping the requests in flight: it stops as SIGTERM does. --access-log logs a
    line per request, which nothing did (uvicorn runs at warning). The server runs in a process of its own: a signal
    sent to the test's own process before the server's handlers were in place killed a test worker, and xdist then
    waited for it for good (a CI run hung)."""
    import signal
    import subprocess
    import sys

    from serving import free_port

    port, sig = free_port(), getattr(signal, stop)
    proc = subprocess.Popen([sys.executable, "-m", "sdopt.cli", "serve", str(tiny_model), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, timeout=120, every=0.2)
        assert proc.poll() is None, proc.communicate()
        httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "probe-1"}).raise_for_status()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and f"stopped tiny ({stop})" in err, (proc.returncode, err)
    assert ('"GET /health HTTP/1.1" 200' in out) == bool(flags), out
    assert ('"GET /health HTTP/1.1" 200 OK request_id=probe-1' in out) == bool(flags), out  # the request's id ends its line


def test_sdopt_serve_stopped_by_sigterm_while_it_loads_exits_0_too(tiny_model):
    """systemd stopping a unit still starting (a large model loads for minutes): SIGTERM during the load ended 130,
    "sdopt: interrupted", the unit failed, where the same stop a moment later ends 0 (qa75's list)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "sdopt.cli", "serve", str(tiny_model), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # "loading ...": said just before the load, which imports torch (seconds)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert first.startswith("loading ") and proc.returncode == 0, (first, proc.returncode, err)
    assert "stopped tiny (SIGTERM) while it loaded" in err and "Traceback" not in err, err


SIGTERM_AS_THE_APP_IS_BUILT = """
import os, signal, sys, types
import sdopt
import sdopt.serve.server as server
# The window after the load is the point, not the load: a stand-in pipeline spares the process importing torch and
# Diffusers (~9 s of the test on 2 cores). The SIGTERM below ends the serve before build reads the pipeline.
sdopt.load = lambda *args, **kwargs: types.SimpleNamespace(close=lambda: None)
build = server.build
def build_after_a_sigterm(*args, **kwargs):  # systemd's stop, as the app is built after the load
    os.kill(os.getpid(), signal.SIGTERM)
    return build(*args, **kwargs)
server.build = build_after_a_sigterm
from sdopt.cli import main
sys.exit(main(["serve", sys.argv[1], "--port", "0"]))
"""


def test_sdopt_serve_stopped_by_sigterm_after_the_load_before_uvicorn_starts_exits_0_too(tiny_model):
    """Between the load's end and uvicorn's own signal handlers (FastAPI's import, --embeddings-dir's embeddings: a
    second or more), SIGTERM still ended 130, "sdopt: interrupted", where the same stop before and after ends 0."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGTERM_AS_THE_APP_IS_BUILT, str(tiny_model)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "stopped tiny (SIGTERM)" in done.stderr, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr


def test_sdopt_serve_stopped_by_two_quick_ctrl_c_says_one_line_not_a_traceback(tiny_model):
    """Ctrl-C pressed twice: uvicorn raised both SIGINTs again once stopped, the second inside the event loop while its
    lifespan task waited, and logged that as a traceback (KeyboardInterrupt, then CancelledError) before sdopt's line."""
    import signal
    import subprocess
    import sys
    import time

    from serving import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sdopt.cli", "serve", str(tiny_model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, timeout=120, every=0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("sdopt: interrupted"), err


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False

# --- LoRAs by name in the prompt ---------------------------------------------------------
def test_a_prompt_lora_weight_out_of_range_names_the_prompt(tmp_path):
    """<lora:NAME:50> (or two tags whose weights add past 10) was refused by the loop's check, which names no field: the
    422 said loc ["body", "body"]."""
    from sdopt.serve.errors import RequestError
    from sdopt.serve.loras import take_loras

    (tmp_path / "style.safetensors").write_bytes(b"")
    assert take_loras("a <lora:style:6> <lora:style:-2>", tmp_path)[1] == {str(tmp_path / "style.safetensors"): 4.0}
    for prompt in ("a <lora:style:50>", "a <lora:style:6> <lora:style:6>", "a <lora:style:nan>"):
        with pytest.raises(RequestError, match="out of range") as caught:
            take_loras(prompt, tmp_path, "hr_prompt")
        assert caught.value.field == "hr_prompt"


def test_a_native_job_names_its_loras_without_the_servers_absolute_paths(tiny_pipeline, tmp_path):
    """GET /v1/jobs/{id} (and the 202 of POST /v1/jobs) listed a job's LoRAs by the files' absolute paths
    ("/home/alice/loras/style.safetensors"): the operator's home folder and user name to any client."""
    loras = tmp_path / "home" / "alice" / "loras"
    loras.mkdir(parents=True)
    (loras / "style.safetensors").write_bytes(b"never read: the worker does not start")
    with running_server(tiny_pipeline, start_worker=False, lora_dir=str(loras)) as (url, _):
        made = httpx.post(url + "/v1/jobs", json={"prompt": "x <lora:style:0.6>", "steps": 1})
        again = httpx.get(f"{url}/v1/jobs/{made.json()['id']}", params={"images": False})
    for answer in (made, again):
        assert answer.json()["parameters"]["loras"] == {"loras/style.safetensors": 0.6}, answer.text
        assert "alice" not in answer.text and str(tmp_path) not in answer.text, answer.text


def test_prompt_lora_tags_apply_the_named_lora_and_jobs_batch_only_with_their_own(tiny_model, tmp_path):
    """AUTOMATIC1111's <lora:NAME:WEIGHT> in any API's prompt: the same image as GenerateRequest.loras,
    listed at /sdapi/v1/loras, and a job with other LoRAs never shares a generate call."""
    pytest.importorskip("peft")
    import sdopt
    from sdopt.request import GenerateRequest
    from sdopt.serve import jobs as J
    from sdopt.zoo.lora import write_lora

    folder = tmp_path / "loras"
    folder.mkdir()
    style = write_lora(tiny_model, folder / "style.safetensors", seed=1)
    pipeline = sdopt.load(tiny_model)  # its own: LoRA adapters are loaded into it
    same = dict(prompt="a red circle", seed=5, steps=4, height=64, width=64, scheduler="euler")  # AUTOMATIC1111's default sampler here
    expected = pipeline.generate(GenerateRequest(**same, loras={str(style): 0.8}))
    base = pipeline.generate(GenerateRequest(**same))
    with running_server(pipeline, lora_dir=str(folder)) as (url, _app):
        assert httpx.get(f"{url}/sdapi/v1/loras").json() == [{"name": "style", "alias": "style", "path": "loras/style.safetensors", "metadata": {}}]  # the folder by its name: docs/serve.md
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a red circle <lora:style:0.8>", "seed": 5, "cfg_scale": 7.5, **SMALL}, timeout=120)
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["prompt"] == "a red circle" and info["sdopt_loras"] == {"style": 0.8}
        got = np.asarray(png(r.json()["images"][0]), dtype=np.int16)
        assert np.abs(got - np.asarray(expected.images[0], dtype=np.int16)).max() <= 1
        assert np.abs(got - np.asarray(base.images[0], dtype=np.int16)).max() > 1  # the LoRA changed the image
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a <lora:nope:1>", **SMALL}, timeout=60)
        assert r.status_code == 422 and "available: style" in r.text
        r = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a <lora:style:x>", "size": "64x64"}, timeout=60)
        assert r.status_code == 422 and "must be a number" in r.text
    with running_server(pipeline) as (url, _app):
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a <lora:style:1>", **SMALL}, timeout=60)
        assert r.status_code == 422 and "--lora-dir" in r.text

    jobs = run_queued(pipeline, [J.JobSpec(prompt=p, loras=l, **SMALL)
                                 for p, l in (("a", {str(style): 0.8}), ("b", {str(style): 0.8}), ("c", {str(style): 0.5}), ("d", None))], max_batch=8)
    assert [job.batch_size for job in jobs] == [2, 2, 1, 1]


def test_the_fuzz_script_exits_with_schemathesis_status_and_removes_its_folder(tmp_path):
    """measure/serve_fuzz.sh, run with stand-ins for sdopt, curl and schemathesis: its exit trap, under set -e, ended on
    `wait` returning the stopped server's 130, so a clean run exited 130 and left its temporary folder."""
    import subprocess
    from pathlib import Path

    stubs = {"sdopt": 'if [ "$1" = init-model ]; then mkdir -p "$3"; exit 0; fi\ntrap "exit 130" TERM\nwhile :; do sleep 0.1; done',
             "curl": "echo 'sdopt_jobs_total{outcome=\"succeeded\"} 0'"}
    (tmp_path / "bin").mkdir()
    for name, body in stubs.items():
        (tmp_path / "bin" / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "tmp").mkdir()
    for status in (0, 1):  # schemathesis' own: 1 when a check failed
        (tmp_path / "bin" / "schemathesis").write_text(f"#!/bin/bash\nexit {status}\n")
        (tmp_path / "bin" / "schemathesis").chmod(0o755)
        done = subprocess.run(["bash", "measure/serve_fuzz.sh", "1"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TMPDIR": str(tmp_path / "tmp")}, timeout=60)
        assert done.returncode == status, done.stdout + done.stderr
        assert not list((tmp_path / "tmp").iterdir())


def test_image_dir_is_swept_once_a_minute_and_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """Every linked answer walked the whole --image-dir for expired folders (an hour of a busy server's jobs: tens of
    thousands of entries per answer, walk qa47); and a write that failed (a full disk) left its .tmp file behind."""
    import os

    from sdopt.serve import image_links

    links = image_links.ImageLinks(tmp_path)
    walks = []
    real = image_links.Path.iterdir
    monkeypatch.setattr(image_links.Path, "iterdir", lambda self: (walks.append(self), real(self))[1])
    for n in range(3):
        links.keep(f"{n:032x}", [b"png"])
    assert walks == []  # swept when made, not again within the minute
    monkeypatch.setattr(links, "_swept", links._swept - image_links.SWEEP_EVERY_S)
    links.keep("f" * 32, [b"png"])
    assert walks == [tmp_path]

    with pytest.raises(TypeError):  # a write that fails inside keep, as a full disk's does
        links.keep("e" * 32, ["not bytes"])
    assert os.listdir(tmp_path / ("e" * 32)) == []


def test_image_dir_and_its_job_folders_are_this_users_alone_as_their_images(tmp_path):
    """The images and the key were 0600, but --image-dir and each job's folder were made 0755 (umask 022): another local
    user could list every job id (on a keyless server, /v1/jobs/ID shows its prompt and images) and each job's files."""
    import os

    from sdopt.serve import image_links

    before = os.umask(0o022)  # the usual one, which made them 0755
    try:
        links = image_links.ImageLinks(tmp_path / "made" / "here")
        links.keep("a" * 32, [b"png"])
    finally:
        os.umask(before)
    for path in (tmp_path / "made" / "here", tmp_path / "made" / "here" / ("a" * 32)):
        assert path.stat().st_mode & 0o777 == 0o700, (path, oct(path.stat().st_mode))


def test_image_dir_on_a_full_disk_answers_507_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full --image-dir disk: the linked answer was a bare 500 'Internal Server Error' and its .tmp file stayed (a full
    disk failing the rename, or the close that writes a small PNG's buffered bytes, is outside keep's cleanup); the key's
    first write left its .link-key-* file and did not say the disk was full."""
    import errno
    import os

    from sdopt.serve import image_links
    from sdopt.serve.errors import RequestError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    links = image_links.ImageLinks(tmp_path / "kept")
    monkeypatch.setattr(image_links.os, "replace", full)
    with pytest.raises(RequestError, match="disk is full.*b64_json") as refused:
        links.keep("e" * 32, [b"png"])
    assert refused.value.status == 507
    assert os.listdir(tmp_path / "kept" / ("e" * 32)) == []

    real_fdopen = os.fdopen

    def fdopen_full(fd, *args, **kwargs):
        out = real_fdopen(fd, *args, **kwargs)
        out.write = full
        return out

    monkeypatch.setattr(image_links.os, "fdopen", fdopen_full)
    with pytest.raises(SdoptError, match="its disk is full; free some space"):
        image_links.ImageLinks(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []


def test_an_image_limit_past_the_body_limit_is_refused_from_python_too():
    """sdopt serve refused --max-image-bytes above --max-body-bytes, but a ServeSettings built in Python (an embedder, a
    Ray Serve deployment) took it silently: a limit never reached, the body's 413 coming first. Refused where both go."""
    from sdopt.serve.settings import ServeSettings

    with pytest.raises(SdoptError, match=r"--max-image-bytes 50331648 cannot be reached: a request body is at most --max-body-bytes 33554432"):
        ServeSettings(max_image_bytes=48 * 2**20)
    assert ServeSettings(max_image_bytes=48 * 2**20, max_body_bytes=80 * 2**20).max_image_bytes == 48 * 2**20
    assert ServeSettings(max_body_bytes=1000).max_image_bytes == 16 * 2**20  # the default is not held against a smaller body


def test_the_body_and_image_limits_are_serve_flags(tiny_model, monkeypatch, capsys):
    """ServeSettings refused "--max-body-bytes 0" and "--max-image-bytes 0", flags sdopt serve did not have: a server
    could not take an init image over 16 MiB. The image limit's message says the server's own limit, under 1 MiB too."""
    import sdopt.serve.server as server
    from sdopt.cli import main
    from sdopt.serve.images import read_image

    seen = {}
    monkeypatch.setattr(server, "serve", lambda artifact, settings, options, **http: seen.update(settings=settings))
    assert main(["serve", str(tiny_model), "--max-body-bytes", str(64 * 2**20), "--max-image-bytes", str(48 * 2**20)]) == 0
    assert (seen["settings"].max_body_bytes, seen["settings"].max_image_bytes) == (64 * 2**20, 48 * 2**20)
    assert main(["serve", str(tiny_model), "--max-image-bytes", "0"]) == 2
    assert "--max-image-bytes 0: must be a positive integer" in capsys.readouterr().err
    # An image limit past the body's could never be reached (the body's 413 came first): refused, saying what to pass
    assert main(["serve", str(tiny_model), "--max-image-bytes", str(48 * 2**20)]) == 2
    assert "--max-image-bytes 50331648 cannot be reached: a request body is at most --max-body-bytes 33554432" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--max-body-bytes", "1000"]) == 0 and seen["settings"].max_image_bytes == 16 * 2**20  # the default image limit is not held against a smaller body
    with pytest.raises(Exception, match="larger than the 0.5 MiB this server accepts"):
        read_image(b"x" * (2**19 + 1), "image", 2**19, 10**6)


def test_a_loopback_server_answers_only_requests_addressed_to_loopback_or_an_allowed_name(tiny_pipeline, tiny_model, capsys):
    """Without credentials a server on 127.0.0.1 answered any web page the user opened: one whose name was made to
    resolve to 127.0.0.1 (DNS rebinding) read prompts and images as same-origin (Host: evil.example), and any site could
    end the user's job with a form's POST to /sdapi/v1/interrupt (Origin: https://evil.example). Both get 403 saying
    what to pass; loopback names, a name given by --allowed-hosts, and clients that send no Origin are served."""
    from sdopt.cli import main

    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        port = url.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "localhost", "LOCALHOST.", "app.localhost", "127.0.0.2", "[::1]"):
            assert httpx.get(url + "/sdapi/v1/options", headers={"Host": f"{host}:{port}"}).status_code == 200, host
        for origin in ("localhost", "127.0.0.1"):  # the server's own page, opened as either, posting to its own origin
            headers = {"Host": f"{origin}:{port}", "Origin": f"http://{origin}:{port}"}
            assert httpx.post(url + "/sdapi/v1/interrupt", headers=headers).status_code == 200, origin
        # A page on another loopback port (a local dev server) is another site, as a page of another name is
        other_port = httpx.post(url + "/sdapi/v1/interrupt", headers={"Host": f"localhost:{port}", "Origin": "http://localhost:3000"})
        assert other_port.status_code == 403 and "Origin 'http://localhost:3000'" in other_port.json()["detail"]
        rebound = httpx.get(url + "/sdapi/v1/options", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 403 and "Host 'evil.example:" in rebound.json()["detail"]
        assert "--allowed-hosts NAME" in rebound.json()["detail"]
        cross_site = httpx.post(url + "/sdapi/v1/interrupt", headers={"Origin": "https://evil.example"})
        assert cross_site.status_code == 403 and "Origin 'https://evil.example'" in cross_site.json()["detail"]
        # OpenAI's routes answer in OpenAI's error shape, as every refusal there
        openai_shaped = httpx.get(url + "/v1/models", headers={"Host": "evil.example"})
        assert openai_shaped.status_code == 403 and "DNS rebinding" in openai_shaped.json()["error"]["message"]
        assert httpx.get(url + "/v1/models", headers={"Origin": "null"}).status_code == 403  # a sandboxed frame, a file:// page
    with running_server(tiny_pipeline, start_worker=False, allowed_hosts=("sd.example.com",)) as (url, _):
        for headers in ({"Host": "sd.example.com"}, {"Host": "SD.example.com:443", "Origin": "https://sd.example.com"}):
            assert httpx.get(url + "/sdapi/v1/options", headers=headers).status_code == 200, headers
        assert httpx.get(url + "/sdapi/v1/options", headers={"Host": "other.example.com"}).status_code == 403
    with running_server(tiny_pipeline, start_worker=False, allowed_hosts=("*",)) as (url, _):
        assert httpx.get(url + "/sdapi/v1/options", headers={"Host": "evil.example", "Origin": "https://evil.example"}).status_code == 200
    for given in ("https://sd.example.com", "sd.example.com:8443", "null"):
        assert main(["serve", str(tiny_model), "--port", "0", "--allowed-hosts", given]) == 2
        assert f"--allowed-hosts {given!r}: give host names" in capsys.readouterr().err
    assert main(["serve", str(tiny_model), "--ray", "--allowed-hosts", "sd.example.com"]) == 2
    assert "--allowed-hosts are for one process under uvicorn" in capsys.readouterr().err


def test_an_origin_that_does_not_parse_is_refused_not_a_server_error(tiny_pipeline):
    """Origin: http://[::1 (no bracket closing the address) ended in urlsplit's ValueError: a 500 and a traceback in the
    server's log for a header the guard exists to judge."""
    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        answer = httpx.get(url + "/sdapi/v1/options", headers={"Origin": "http://[::1"})
        assert answer.status_code == 403 and "Origin 'http://[::1'" in answer.json()["detail"]


def test_a_host_that_only_begins_with_a_loopback_address_in_brackets_is_refused():
    """Host: [::1].evil.example was read as [::1] (what followed the bracket was dropped) and served as loopback."""
    from sdopt.serve.hosts import host_name, is_loopback

    assert [host_name(h) for h in ("[::1]", "[::1]:7860", "[FD00::5]")] == ["::1", "::1", "fd00::5"]
    for host in ("[::1].evil.example", "[::1]evil.example:7860"):
        assert not is_loopback(host_name(host)), host


def test_a_second_host_or_origin_header_is_judged_too(tiny_pipeline):
    """The guard kept the last of two Host (or Origin) headers, so evil.example before 127.0.0.1 passed, and the app,
    which reads the first, saw evil.example."""
    import socket

    with running_server(tiny_pipeline, start_worker=False) as (url, _):
        for field, evil, good in (("Host", "evil.example", "127.0.0.1"), ("Origin", "https://evil.example", "http://127.0.0.1")):
            for first, second in ((evil, good), (good, evil)):
                # written by hand: httpx refuses to send two Host headers
                lines = ["GET /sdapi/v1/options HTTP/1.1", *(["Host: 127.0.0.1"] if field == "Origin" else []),
                         f"{field}: {first}", f"{field}: {second}", "Connection: close", "", ""]
                with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as connection:
                    connection.sendall("\r\n".join(lines).encode())
                    answer = b"".join(iter(lambda: connection.recv(65536), b"")).decode()
                assert answer.startswith("HTTP/1.1 403") and f"{field} '{evil}'" in answer, (first, second)


def test_a_server_bound_beyond_loopback_checks_names_only_where_some_are_allowed():
    from sdopt.serve.settings import ServeSettings

    assert ServeSettings(host="0.0.0.0").host_check is None  # reached by names sdopt cannot know; --api-key protects it
    assert ServeSettings(host="0.0.0.0", allowed_hosts=("sd.example.com.",)).host_check == {"sd.example.com"}
    assert ServeSettings(host="127.0.0.1").host_check == frozenset()
    assert ServeSettings(host="::1", allowed_hosts=("*",)).host_check is None


def test_allowed_hosts_takes_an_ipv6_address_as_the_address_bar_shows_it_and_refuses_names_no_host_can_match():
    """--allowed-hosts [fd00::5] was refused with 'give host names as a browser's address bar shows them', which is how
    the address bar shows it; *.example.com (no Host header carries a *: each name goes in full) and '.' were taken in
    silence, and no request could ever match them."""
    from sdopt.serve.settings import ServeSettings

    assert ServeSettings(host="::", allowed_hosts=("[FD00::5]", "fd00::6")).host_check == {"fd00::5", "fd00::6"}
    for name in ("*.example.com", ".", "[fd00::5]:80", "[fd00::5]x"):
        with pytest.raises(SdoptError, match=re.escape(f"--allowed-hosts {name!r}: give host names")):
            ServeSettings(allowed_hosts=(name,))


def test_a_server_bound_to_another_loopback_address_is_guarded_as_on_127_0_0_1():
    """--host 127.0.0.2 (loopback, this machine only) counted as exposed: no Host guard, so a web page could use it by
    DNS rebinding, and the warning that anyone who reaches the port can use it."""
    from sdopt.serve.settings import ServeSettings

    for host in ("127.0.0.2", "127.1.2.3", "LOCALHOST", "::1"):
        assert not ServeSettings(host=host).exposed and ServeSettings(host=host).host_check == frozenset(), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "sd.example.com"):
        assert ServeSettings(host=host).exposed, host


def test_a_served_folder_is_quoted_only_as_itself():
    """The worker's rule for "an error about the operator's file" (500, not 422): a relative --lora-dir loras matched
    /data/other/loras/x, and a served "/" any https:// in a message (qa98)."""
    from sdopt.serve.worker import quotes_served_file

    assert quotes_served_file("cannot read loras/bad.safetensors: not a LoRA", {"loras"})
    assert quotes_served_file("cannot read '/srv/loras/bad.safetensors'", {"/srv/loras"})
    assert not quotes_served_file("cannot read /data/other/loras/x.safetensors", {"loras"})
    assert not quotes_served_file("cannot read myloras/x.safetensors", {"loras"})
    assert not quotes_served_file("see https://example.com/x", {"/"})
