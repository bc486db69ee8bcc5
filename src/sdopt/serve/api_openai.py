"""OpenAI's Images API (``images.generate`` in its SDK) and ``/v1/models``, over the loaded artifact.

Only ``response_format=b64_json`` is served: a ``url`` answer would need the
server to host files for a while, so it is refused with a 400 that says so.
Fields OpenAI's newer models take (quality, style, background, ...) are
accepted and have no effect on an SD model.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdopt.serve import jobs as J
from sdopt.serve.errors import RequestError
from sdopt.serve.submission import LEVER_NAMES, cache_interval_field, default_size, failure_status, guidance_end_field, random_seed, submit, wait
from sdopt.serve.images import encode_png

router = APIRouter(tags=["openai"])


class ImageGeneration(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(max_length=32_000)
    model: str | None = None
    n: int | None = Field(1, ge=1, le=10)
    size: str | None = Field("auto", description="WIDTHxHEIGHT, or auto: the model's own size (512x512 for SD 1.5)")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    user: str | None = None
    # sdopt's own (the OpenAI SDK sends them with extra_body={...}).
    sdopt_cache_interval: int | None = cache_interval_field()
    sdopt_guidance_end: float | None = guidance_end_field()


def _size(text: str | None, side: int) -> tuple[int, int]:
    if text in (None, "auto"):
        return side, side
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise RequestError("size", f"size={text!r}: give WIDTHxHEIGHT, like 512x512")
    return int(width), int(height)


@router.post("/v1/images/generations")
async def generations(request: Request, body: ImageGeneration) -> dict[str, Any]:
    name = request.app.state.model_name
    if body.model not in (None, name):
        raise RequestError("model", f"model {body.model!r} is not served here; this server serves {name!r}", status=404)
    if body.response_format == "url":
        raise RequestError("response_format", "response_format=url is not supported: ask for b64_json", status=400)
    width, height = _size(body.size, default_size(request.app.state.worker.pipeline))
    spec = J.JobSpec(prompt=body.prompt, seed=random_seed(), n=body.n or 1, width=width, height=height,
                     cache_interval=body.sdopt_cache_interval, guidance_end=body.sdopt_guidance_end)
    job = await wait(submit(request, spec, "openai", names={"num_images": "n", "width": "size", "height": "size", **LEVER_NAMES}))
    if job.status != J.SUCCEEDED:
        raise RequestError("prompt", f"the image was not made: {job.status} ({job.error})", status=failure_status(job))
    return {"created": int(job.finished or time.time()), "data": [{"b64_json": encode_png(im), "revised_prompt": None} for im in job.images]}


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
