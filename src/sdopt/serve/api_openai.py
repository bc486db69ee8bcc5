"""OpenAI's Images API (``images.generate`` and ``images.edit`` in its SDK) and ``/v1/models``, over the loaded artifact.

``response_format=url`` answers with signed links to the images, valid for 60
minutes without the API key, as OpenAI's (serve/image_links.py: across restarts
with ``sdopt serve --image-dir``); b64_json is the default. Behind several replicas (``--ray``) a link could reach a replica that
does not hold the image, so there it is refused with a 400 that says so, unless ``--image-dir`` names a folder they all see
(each writes its images and reads the links' key there, so any of them answers any link).
``output_format`` (png, jpeg, webp) and ``output_compression`` (their quality, 100 by default as OpenAI's) choose the
files sent, each with its generation parameters. Fields OpenAI's newer models take (quality, style, background, ...)
are accepted and have no effect on an SD model; an ``sdopt_`` field an endpoint does not take is refused.

An edit is inpainting where OpenAI's mask is fully transparent (alpha 0) — the
mask's, or the image's own when no mask is sent, as OpenAI reads it — and
img2img of the whole image when nothing is transparent. sdopt's own fields
(the SDK sends them with ``extra_body``): ``sdopt_seed``, ``sdopt_strength``
(edits), ``sdopt_negative_prompt``, ``sdopt_prompt_emphasis`` (generations: AUTOMATIC1111's (word:1.2) weights), ``sdopt_cache_interval``, ``sdopt_guidance_end``, ``sdopt_clip_skip`` (AUTOMATIC1111's Clip skip), ``sdopt_steps`` and
``sdopt_guidance_scale`` (by default the server's: ``sdopt serve --steps/--guidance``;
it serves its ``--scheduler``).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from sdopt.serve import image_links
from sdopt.serve import jobs as J
from sdopt.serve.errors import RequestError
from sdopt.serve.submission import (LEVER_NAMES, cache_interval_field, clip_skip_field, default_size, guidance_end_field, not_made, random_seed, refuse_text_only,
                                    submit, wait, with_server_defaults)
from sdopt.request import MAX_CLIP_SKIP, MAX_GUIDANCE, MAX_SEED
from sdopt.infotext import parameters_left_out
from sdopt.serve.images import OUTPUT_FORMATS, has_alpha, image_bytes, read_image
from sdopt.serve.worker import IMAGES_KEPT

router = APIRouter(tags=["openai"])
MAX_PROMPT_CHARS = 32_000  # a prompt's and a negative prompt's length, on both endpoints


class ImageGeneration(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int | None = Field(1, ge=1, le=10)
    size: str | None = Field("auto", description="WIDTHxHEIGHT, or auto: the model's own size (512x512 for SD 1.5)")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] | None = Field("png", description="the images' file format; each carries its "
                                                                 "generation parameters (a PNG's text chunk, a JPEG's or WebP's EXIF)")
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg and webp: the quality, 0 to 100 (default 100, as "
                                                                           "OpenAI's); ignored for png")
    user: str | None = None
    stream: bool | None = Field(None, description="refused when true: the answer is the finished images (see POST /v1/jobs for progress)")
    # sdopt's own (the OpenAI SDK sends them with extra_body={...}).
    sdopt_cache_interval: int | None = cache_interval_field()
    sdopt_guidance_end: float | None = guidance_end_field()
    sdopt_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the first image's seed (the n images take seed, seed+1, ...); null: random")
    sdopt_steps: int | None = Field(None, ge=1, description="null: the server's default (sdopt serve --steps)")
    sdopt_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="what the image should not show (classifier-free guidance's other prompt)")
    sdopt_guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="null: the server's default (sdopt serve --guidance)")
    sdopt_prompt_emphasis: bool = Field(False, description="read AUTOMATIC1111's (word:1.2) weights in the prompts (default: plain text)")
    sdopt_clip_skip: int = clip_skip_field()


OPENAI_NAMES = {"num_images": "n", "width": "size", "height": "size", "seed": "sdopt_seed", "steps": "sdopt_steps",
                "guidance_scale": "sdopt_guidance_scale", "negative_prompt": "sdopt_negative_prompt", "clip_skip": "sdopt_clip_skip",
                **LEVER_NAMES}


# ASCII digits, at most 9 of each side: str.isdigit() passed "²" (and other Unicode digits int() refuses) and 5,000-digit
# sides (past int()'s limit), each a ValueError answered 500.
_SIZE = re.compile(r"([0-9]{1,9})x([0-9]{1,9})")


def _size(text: Any, side: int) -> tuple[int, int]:
    if text in (None, "auto"):
        return side, side
    if not isinstance(text, str):  # an edit's form field sent as a file
        raise RequestError("size", "size: send it as text, WIDTHxHEIGHT like 512x512, not as a file")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise RequestError("size", f"size={text!r}: give WIDTHxHEIGHT, like 512x512")
    return int(match.group(1)), int(match.group(2))


# The SDK's stream=True reads server-sent events (partial images, then the image): a JSON answer read that way yields
# nothing, so the client would get no image and no error while the server made it for nobody.
_NO_STREAM = ("stream=true: sdopt serve answers with the finished images only, not a stream of partial images; send "
              "stream=false (or leave it out), or follow the progress of a native job: POST /v1/jobs, GET /v1/jobs/{id}/events")


def _check_model_and_format(request: Request, model: str | None, response_format: str | None, stream: bool = False) -> None:
    if stream:
        raise RequestError("stream", _NO_STREAM)
    name = request.app.state.model_name
    if model not in (None, "", name):
        raise RequestError("model", f"model {model!r} is not served here; this server serves {name!r}", status=404)
    if response_format not in (None, "b64_json", "url"):
        raise RequestError("response_format", f"response_format={response_format!r}: give b64_json or url", status=400)
    if response_format == "url" and request.app.state.replica is not None and request.app.state.image_links.folder is None:
        # With --image-dir every replica writes its linked images there and signs with the key kept there: any answers a link.
        raise RequestError("response_format", "response_format=url is served behind several replicas only with --image-dir (a folder "
                                              "every replica sees, as the artifact): without it a link could reach one that does not "
                                              "hold the image; give it, or ask for b64_json", status=400)


def _check_sdopt_fields(sent, known, endpoint: str) -> None:
    """Refuse a field of sdopt's own prefix this endpoint does not take (``sdopt_sed``, ``sdopt_scheduler``; an edit's
    ``sdopt_prompt_emphasis``). OpenAI's other fields are let through, as its newer models' are, but sdopt_ is ours: such a
    field was accepted and did nothing, so a misspelt seed made a random image and the client was told nothing."""
    from sdopt.errors import did_you_mean

    known = sorted(name for name in known if name.startswith("sdopt_"))
    for name in sent:
        if isinstance(name, str) and name.startswith("sdopt_") and name not in known:
            raise RequestError(name, f"{name}: {endpoint} takes no such field{did_you_mean(name, known)}; its own fields are "
                                     + ", ".join(known))


def _encoding(output_format: str | None, compression: int | None) -> tuple[str, int | None]:
    """(format, quality) of OpenAI's output_format and output_compression: quality 100 by default for JPEG and WebP,
    as OpenAI's; none for PNG, which is lossless."""
    output_format = output_format or "png"
    if output_format not in OUTPUT_FORMATS:
        raise RequestError("output_format", f"output_format={output_format!r}: give png, jpeg or webp", status=400)
    return output_format, None if output_format == "png" else (100 if compression is None else compression)


async def _answer(request: Request, spec: J.JobSpec, names: dict[str, str], response_format: str | None,
                  encoding: tuple[str, int | None] = ("png", None)) -> dict[str, Any]:
    # submitted off the event loop: a 32,000-character prompt's chunks (with emphasis) take ~0.4 s to count, and wait for
    # the tokenizer while the worker encodes a batch
    job = await wait(await asyncio.to_thread(submit, request, spec, "openai", names=names), request)
    if job.status != J.SUCCEEDED:
        raise not_made(job)
    output_format, quality = encoding
    if response_format == "url":
        links = request.app.state.image_links
        if links.folder is not None:  # --image-dir: the links outlive this process and the jobs kept in memory
            # the files encoded there too: seconds of a large batch off the event loop, which serves every other request
            await asyncio.to_thread(lambda: links.keep(job.id, [image_bytes(im, output_format, quality) for im in job.images], output_format))
        data = [{"url": links.url(str(request.base_url), job.id, i, job.finished, output_format, quality), "revised_prompt": None}
                for i in range(len(job.images))]
    else:
        # encoded off the event loop, as above
        data = await asyncio.to_thread(lambda: [{"b64_json": base64.b64encode(image_bytes(im, output_format, quality)).decode("ascii"),
                                                 "revised_prompt": None} for im in job.images])
    # output_format: said, as OpenAI's answer says the format it sent.
    # sdopt_warnings: what the pipeline warned of (a prompt cut at the text encoder's tokens, ...), which a client saw nowhere;
    # and a JPEG sent without its parameters (too long for its EXIF), which only the server's stderr said
    left_out = [why for im in job.images if (why := parameters_left_out(im, OUTPUT_FORMATS[output_format][0]))]
    return {"created": int(job.finished or time.time()), "data": data, "output_format": output_format,
            "sdopt_warnings": job.warnings + list(dict.fromkeys(left_out))}


# Outside the API key (a link is its own credential), so the router is included without it (app.py).
files_router = APIRouter(tags=["openai"])


_FILE_NAME = re.compile(r"([0-9]{1,6})\.(png|jpeg|webp)")


@files_router.get(image_links.PATH + "/{job_id}/{name}", response_class=Response)
def image_file(request: Request, job_id: str, name: str, expires: int, signature: str, k: str | None = None,
               q: int | None = None) -> Response:
    """An image a response_format=url answer links to: ``name`` INDEX.FORMAT (png, jpeg, webp), ``q`` its quality (k:
    which key signed it, serve/image_links.py)."""
    named = _FILE_NAME.fullmatch(name)
    if named is None:
        raise RequestError("url", "no such image file: a link names INDEX.png, INDEX.jpeg or INDEX.webp", status=404)
    index, output_format = int(named.group(1)), named.group(2)
    links = request.app.state.image_links
    links.check(job_id, index, expires, signature, k, output_format, q)
    media_type = OUTPUT_FORMATS[output_format][1]
    job = request.app.state.worker.jobs.get(job_id)
    if job is not None and not job.images_dropped and 0 <= index < len(job.images):
        return Response(image_bytes(job.images[index], output_format, q), media_type=media_type)
    stored = links.stored(job_id, index, output_format)
    if stored is not None:
        return Response(stored, media_type=media_type)
    kept = (f"the server keeps the images of its newest {IMAGES_KEPT} jobs, and none across a restart; "
            "`sdopt serve --image-dir DIR` keeps them on disk for the links' lifetime" if links.folder is None else
            "it is not in --image-dir any more")  # not the folder's path: the links' route is open to anyone
    raise RequestError("url", f"this image is no longer kept ({kept}): generate it again", status=410)


@router.post("/v1/images/generations")
async def generations(request: Request, body: ImageGeneration) -> dict[str, Any]:
    _check_model_and_format(request, body.model, body.response_format, bool(body.stream))
    _check_sdopt_fields(body.model_extra or {}, ImageGeneration.model_fields, "/v1/images/generations")
    if not body.prompt.strip():  # as edits refuse it, and OpenAI's API does: an empty prompt here is a client's mistake
        raise RequestError("prompt", "give the prompt: what the image shows (an image from no prompt: sdopt's own /v1/jobs takes an empty one)")
    refuse_text_only(request.app.state.worker.pipeline, "generations")
    encoding = _encoding(body.output_format, body.output_compression)
    width, height = _size(body.size, default_size(request.app.state.worker.pipeline))
    spec = J.JobSpec(prompt=body.prompt, negative_prompt=body.sdopt_negative_prompt, n=body.n or 1, prompt_emphasis=body.sdopt_prompt_emphasis,
                     clip_skip=body.sdopt_clip_skip, seed=body.sdopt_seed if body.sdopt_seed is not None else random_seed(),
                     width=width, height=height, cache_interval=body.sdopt_cache_interval, guidance_end=body.sdopt_guidance_end,
                     **with_server_defaults(request.app.state.settings, body.sdopt_steps, body.sdopt_guidance_scale))
    return await _answer(request, spec, OPENAI_NAMES, body.response_format, encoding)


# --- images.edit: multipart/form-data, as OpenAI's SDK sends it ---------------------------------------------
EDIT_FORM = {
    "type": "object",
    "required": ["image", "prompt"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image to edit (PNG, JPEG, WebP); its fully transparent pixels are "
                  "the area to edit when no mask is sent"},
        "mask": {"type": "string", "format": "binary", "description": "a PNG the image's size whose fully transparent pixels (alpha 0) are the area to edit"},
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "model": {"type": "string"},
        "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "size": {"type": "string", "description": "WIDTHxHEIGHT, or auto (default): the image's size, rounded down to a multiple of 8"},
        "response_format": {"type": "string", "enum": ["b64_json", "url"], "default": "b64_json"},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png"},
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100, "description": "jpeg and webp: the quality (default 100)"},
        "stream": {"type": "boolean", "description": "refused when true: the answer is the finished images"},
        "sdopt_strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                           "description": "how much of the schedule runs on the image (default 1 where a mask is transparent: the area is "
                                          "repainted; 0.8 for an edit of the whole image)"},
        "sdopt_seed": {"type": "integer", "minimum": 0},
        "sdopt_cache_interval": {"type": "integer", "minimum": 1},
        "sdopt_guidance_end": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "sdopt_clip_skip": {"type": "integer", "minimum": 1, "maximum": MAX_CLIP_SKIP, "description": "AUTOMATIC1111's Clip skip (default 1)"},
        "sdopt_steps": {"type": "integer", "minimum": 1, "description": "default: the server's (sdopt serve --steps)"},
        "sdopt_negative_prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "sdopt_guidance_scale": {"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE, "description": "default: the server's (sdopt serve --guidance)"},
    },
}
MAX_FILES = 4  # the form's files read before refusing: an image and a mask, and a few more to say how many were sent
EDIT_NAMES = {**OPENAI_NAMES, "init_image": "image", "mask_image": "mask", "strength": "sdopt_strength"}
MASKED_STRENGTH, WHOLE_IMAGE_STRENGTH = 1.0, 0.8


def _number(form, name: str, kind: type, low: float | None = None, high: float | None = None, above: float | None = None):
    """A form field as an int or float within bounds, None when absent; a 422 naming it otherwise."""
    text = form.get(name)
    if text is None or text == "":
        return None
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise RequestError(name, f"{name}={text!r}: give {'an integer' if kind is int else 'a number'}") from None
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None and value <= above):
        bounds = f"{'more than ' + str(above) if above is not None else 'at least ' + str(low)}" + (f" and at most {high}" if high is not None else "")
        raise RequestError(name, f"{name}={text}: give {bounds}")
    return value


# gpt-image-1 takes up to 16 images as references (the SDK's image=[...]); a Stable Diffusion model edits one picture.
_ONE_IMAGE = ("sdopt edits one image per request (a Stable Diffusion model cannot take several as references, as gpt-image-1 "
              "does): send only the image to edit, and say in the prompt what the others showed")


async def _file(form, names: tuple[str, ...], settings) -> Any:
    """The one image file sent under any of ``names`` (``image`` or the SDK's ``image[]``), None when none is."""
    sent = [value for key, value in form.multi_items() if key in names]
    if not sent:
        return None
    if len(sent) > 1:
        raise RequestError(names[0], f"{len(sent)} files under {names[0]}: " + (_ONE_IMAGE if names[0] == "image" else "send one mask"))
    if isinstance(sent[0], str):
        raise RequestError(names[0], f"{names[0]}: send it as a file (multipart/form-data, as OpenAI's images.edit does), not as text")
    data = await sent[0].read(settings.max_image_bytes + 1)
    # decoded off the event loop, which answers every other client meanwhile: up to 16 megapixels take a second
    return await asyncio.to_thread(read_image, data, names[0], settings.max_image_bytes, settings.max_input_pixels)


def edit_mask(image, mask):
    """OpenAI's mask -> the loop's (white = repaint): the fully transparent pixels of the mask, or of the image
    itself when no mask is sent; None (edit the whole image: img2img) when the image has none."""
    from PIL import Image

    if mask is not None and mask.size != image.size:
        raise RequestError("mask", f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}: send them the same size")
    source = mask if mask is not None else image
    if not has_alpha(source):
        if mask is not None:
            raise RequestError("mask", "the mask has no alpha channel: OpenAI's mask marks the area to edit as fully transparent (alpha 0), "
                                       "so send a PNG with transparency")
        return None
    edit = np.asarray(source.convert("RGBA").getchannel("A")) == 0
    if not edit.any():
        if mask is not None:
            raise RequestError("mask", "no pixel of the mask is fully transparent (alpha 0): there is nothing to edit")
        return None
    return Image.fromarray(np.where(edit, 255, 0).astype(np.uint8), "L")


@router.post("/v1/images/edits", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": EDIT_FORM}}}})
async def edits(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("image", "send the edit as multipart/form-data with the image as a file (as OpenAI's images.edit does)")
    from starlette.exceptions import HTTPException

    try:
        form = await request.form(max_files=MAX_FILES, max_fields=64)
    except HTTPException as exc:  # starlette's 400 for a form it cannot read: past its limits, or not multipart
        if "files" not in str(exc.detail):
            raise
        raise RequestError("image", f"more than {MAX_FILES} files: send one image and at most one mask. {_ONE_IMAGE}") from None  # a 422 as for 2 to 4
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt", "give the prompt: what the edited image shows")
    negative = form.get("sdopt_negative_prompt") or ""
    for name, text in (("prompt", prompt), ("sdopt_negative_prompt", negative)):
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise RequestError(name, f"{name} must be text of at most {MAX_PROMPT_CHARS} characters")
    model, response_format = form.get("model"), form.get("response_format")
    stream = form.get("stream")
    _check_model_and_format(request, model if isinstance(model, str) else None, response_format if isinstance(response_format, str) else None,
                            isinstance(stream, str) and stream.strip().lower() in ("true", "1"))  # the SDK's form says "true"
    _check_sdopt_fields(form.keys(), EDIT_FORM["properties"], "/v1/images/edits")
    output_format = form.get("output_format")
    encoding = _encoding(output_format if isinstance(output_format, str) else None, _number(form, "output_compression", int, low=0, high=100))
    image = await _file(form, ("image", "image[]"), settings)
    if image is None:
        raise RequestError("image", "give the image to edit (a PNG, JPEG or WebP file)")
    mask = await asyncio.to_thread(edit_mask, image, await _file(form, ("mask",), settings))  # as the images: off the loop
    if mask is None and getattr(request.app.state.worker.pipeline, "inpainting_unet", False):
        # The loop's own refusal names its Python arguments (init_image, mask_image), which an edit has not: say it as the SDK sends it
        raise RequestError("mask", "this server's model is an inpainting checkpoint: it repaints only an area to edit, and nothing marks "
                                   "one (no mask was sent and the image has no fully transparent pixel); send a mask whose fully "
                                   "transparent pixels (alpha 0) are the area to edit, or for an edit of the whole picture serve a "
                                   "text-to-image checkpoint")
    size = form.get("size")
    if size in (None, "", "auto"):
        width, height = (max(8, side - side % 8) for side in image.size)  # the loop's sides are multiples of 8: resized to them
    else:
        width, height = _size(size, 0)
    strength = _number(form, "sdopt_strength", float, high=1, above=0)
    seed = _number(form, "sdopt_seed", int, low=0, high=MAX_SEED)
    spec = J.JobSpec(prompt=prompt, negative_prompt=negative, seed=seed if seed is not None else random_seed(), n=_number(form, "n", int, low=1, high=10) or 1,
                     width=width, height=height, init_image=await asyncio.to_thread(image.convert, "RGB"), mask_image=mask,
                     strength=strength if strength is not None else MASKED_STRENGTH if mask is not None else WHOLE_IMAGE_STRENGTH,
                     cache_interval=_number(form, "sdopt_cache_interval", int, low=1),
                     guidance_end=_number(form, "sdopt_guidance_end", float, high=1, above=0),
                     clip_skip=_number(form, "sdopt_clip_skip", int, low=1, high=MAX_CLIP_SKIP) or 1,
                     **with_server_defaults(settings, _number(form, "sdopt_steps", int, low=1),
                                            _number(form, "sdopt_guidance_scale", float, low=0, high=MAX_GUIDANCE)))
    return await _answer(request, spec, EDIT_NAMES, response_format if isinstance(response_format, str) else None, encoding)


def _model(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "sdopt"}


@router.get("/v1/models")
def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model(request.app.state.model_name, request.app.state.started)]}


@router.get("/v1/models/{model_id}")
def model(request: Request, model_id: str) -> dict[str, Any]:
    name = request.app.state.model_name
    if model_id != name:
        raise RequestError("model", f"model {model_id!r} is not served here; this server serves {name!r}", status=404)
    return _model(name, request.app.state.started)
