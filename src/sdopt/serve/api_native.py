"""sdopt's own job API: an id at once, state on demand, server-sent events, per-job cancel."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sdopt.infotext import KEY
from sdopt.request import MASKED_CONTENT
from sdopt.serve import jobs as J
from sdopt.serve.submission import MAX_PROMPT_CHARS, cache_interval_field, clip_skip_field, default_size, guidance_end_field, random_seed, submit, with_server_defaults
from sdopt.serve.errors import RequestError
from sdopt.serve.images import decode_image, encode_png
from sdopt.serve.worker import FINISHED_KEPT

router = APIRouter(tags=["jobs"])
EVENT_POLL_S = 0.05
# A comment line sent when nothing else was for this long: a job queued behind a long one changes nothing for minutes,
# and a proxy's read timeout (nginx: 60 s) cut a silent stream (the page then followed the job again; other clients
# stop). SSE clients ignore comments.
KEEPALIVE_S = 15.0


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="null: a random seed, reported back")
    n: int = Field(1, ge=1, description="images, seeds seed, seed+1, ...")
    steps: int | None = Field(None, ge=1, description="null: the server's default (sdopt serve --steps, else the model's own)")
    guidance_scale: float | None = Field(None, ge=0, le=50, description="null: the server's default (--guidance, else the model's own)")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="null: the model's own size")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="null: the model's own size")
    scheduler: str | None = Field(None, description="null: the server's default (--scheduler), else the model's own")
    eta: float | None = Field(None, ge=0, le=1, description="ddim and tcd: the fresh noise each step adds; null: 0")
    init_image: str | None = Field(None, description="base64 image: img2img")
    mask: str | None = Field(None, description="base64 image, white = repaint: inpainting (needs init_image)")
    strength: float = Field(0.8, gt=0, le=1)
    masked_content: Literal[MASKED_CONTENT] = Field("original", description="inpainting: what the loop starts from under the mask "
                                                                   "below strength 1 (AUTOMATIC1111's inpainting_fill 1, 2, 3)")
    cache_interval: int | None = cache_interval_field()
    guidance_end: float | None = guidance_end_field()
    prompt_emphasis: bool = Field(False, description="AUTOMATIC1111's emphasis, (word:1.2): weights in the prompts (its API always reads them)")
    clip_skip: int | None = clip_skip_field()


def job_view(request: Request, job: J.Job, images: bool = True) -> dict[str, Any]:
    worker = request.app.state.worker
    parameters = job.describe()
    if parameters.get("loras"):  # the job's LoRA files as /sdapi/v1/loras names them, not by the server's absolute paths
        parameters = {**parameters, "loras": {worker.shown(file): weight for file, weight in parameters["loras"].items()}}
    view = {
        "id": job.id,
        "status": job.status,
        "api": job.api,
        "position": worker.position(job),
        "step": job.step,
        "steps": job.steps or job.spec.steps,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds(),
        "error": job.error,
        "warnings": job.warnings,  # what the pipeline warned of for this request: a prompt cut, an init image resized
        "images_dropped": job.images_dropped,
        "batch_size": job.batch_size,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "parameters": parameters,
        "infotexts": [image.info.get(KEY) for image in job.images],  # each image's generation parameters (sdopt.infotext)
    }
    if images:
        view["images"] = [encode_png(im) for im in job.images]
    return view


def find(request: Request, job_id: str) -> J.Job:
    job = request.app.state.worker.jobs.get(job_id)
    if job is None:
        replica = request.app.state.replica
        where = (f"; replica {replica} answered, and each of the replicas behind this endpoint keeps only its own jobs: "
                 "with replicas, use the synchronous endpoints (/sdapi/v1/txt2img, /sdapi/v1/img2img, /v1/images/generations, /v1/images/edits), which answer on the connection that asked") if replica else ""
        raise HTTPException(404, f"no job {job_id!r} (the server keeps the last {FINISHED_KEPT:,} finished jobs{where})")
    return job


def spec_from(request: Request, body: JobRequest) -> J.JobSpec:
    settings = request.app.state.settings
    if "strength" in body.model_fields_set and not body.init_image:  # sent, not the field's default: ignored unsaid before
        raise RequestError("strength", f"strength={body.strength:g} is how much of init_image is repainted: send init_image with "
                                       "it, or leave strength out for text-to-image")
    limits = (settings.max_image_bytes, settings.max_input_pixels)
    init = decode_image(body.init_image, "init_image", *limits) if body.init_image else None
    mask = decode_image(body.mask, "mask", *limits) if body.mask else None
    side = default_size(request.app.state.worker.pipeline)
    return J.JobSpec(
        prompt=body.prompt, negative_prompt=body.negative_prompt, seed=random_seed() if body.seed is None else body.seed,
        n=body.n, width=body.width or side, height=body.height or side, eta=body.eta, init_image=init, mask_image=mask, strength=body.strength, masked_content=body.masked_content,
        cache_interval=body.cache_interval, guidance_end=body.guidance_end, prompt_emphasis=body.prompt_emphasis,
        clip_skip=body.clip_skip or 1, **with_server_defaults(settings, body.steps, body.guidance_scale, body.scheduler),
    )


@router.post("/v1/jobs", status_code=202)
def create_job(request: Request, body: JobRequest) -> JSONResponse:
    job = submit(request, spec_from(request, body), "native", names={"num_images": "n", "mask_image": "mask"})
    return JSONResponse(job_view(request, job, images=False), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs/{job_id}")
def get_job(request: Request, job_id: str, images: bool = True) -> dict[str, Any]:
    return job_view(request, find(request, job_id), images=images)


@router.delete("/v1/jobs/{job_id}")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    job = find(request, job_id)
    cancelled = request.app.state.worker.cancel(job)
    return {"id": job.id, "status": job.status, "cancelled": cancelled}


@router.get("/v1/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    """Server-sent events: queued (with the position, again when it moves), started, step
    (with a low-resolution preview as a data URL when one was made), done."""
    job = find(request, job_id)
    worker = request.app.state.worker

    async def stream():
        sent, last_position = 0, None
        last_sent = time.monotonic()
        while True:
            if time.monotonic() - last_sent >= KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            for event in job.events_since(sent):
                sent += 1
                data = dict(event)
                if data.get("preview") and job.preview_png:
                    data["preview"] = "data:image/png;base64," + base64.b64encode(job.preview_png).decode("ascii")
                else:
                    data.pop("preview", None)
                last_sent = time.monotonic()
                yield f"event: {data['event']}\ndata: {json.dumps(data)}\n\n"
                if data["event"] == "done":
                    return
            position = worker.position(job)
            if position is not None and position != last_position:
                last_position, last_sent = position, time.monotonic()
                yield f"event: position\ndata: {json.dumps({'event': 'position', 'id': job.id, 'position': position})}\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
