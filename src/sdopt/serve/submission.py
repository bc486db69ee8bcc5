"""From an API's request to a queued job, and from a finished job to an HTTP status: what every API shares."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any

from fastapi import Request
from pydantic import Field

from sdopt.errors import SdoptError, api_fields
from sdopt.serve import jobs as J
from sdopt.serve.errors import RequestError
from sdopt.serve.settings import ServeSettings
from sdopt.serve.worker import SERVER_FILE, SHUTTING_DOWN, Worker, quotes_served_file, served_folders

log = logging.getLogger("sdopt.serve")

_FIELD = re.compile(r"^(\w+)[=:]")
# A prompt's (and a negative prompt's) length on the native and AUTOMATIC1111 APIs; OpenAI's takes its own API's 32,000
# (api_openai.MAX_PROMPT_CHARS). Its chunks are counted as it is accepted (prepare, which the async routes run in a thread:
# on the event loop, which answers no other client meanwhile, a 100 kB AUTOMATIC1111 prompt held it for seconds).
MAX_PROMPT_CHARS = 10_000


# The two request options that change the computation, as every API takes them (the native API by
# these names; AUTOMATIC1111's and OpenAI's, whose own fields have no such thing, as sdopt_NAME).
def cache_interval_field() -> Any:
    return Field(None, ge=1, description="step-feature caching: the whole UNet every N-th step (1: off); null: the artifact's default")


def guidance_end_field() -> Any:
    return Field(None, gt=0, le=1, description="truncated guidance: the fraction of the steps that run guided (1: all); null: the artifact's default")


# Not a lever: the native API takes it as clip_skip, OpenAI's as sdopt_clip_skip; AUTOMATIC1111's as its own setting
# (override_settings.CLIP_stop_at_last_layers, api_a1111.clip_skip).
def clip_skip_field() -> Any:
    from sdopt.request import MAX_CLIP_SKIP

    return Field(1, ge=1, le=MAX_CLIP_SKIP, description="AUTOMATIC1111's Clip skip: the text encoder's last layer but N-1 (1: the last; 2: the penultimate)")


# AUTOMATIC1111's setting that holds Clip skip (override_settings, /sdapi/v1/options): here, where a refusal names it
# (_said), as api_a1111_lists and a1111_fields import this module, not this one them.
CLIP_SKIP_SETTING = "CLIP_stop_at_last_layers"  # Clip skip, which requests without their own override take

LEVER_NAMES = {"cache_interval": "sdopt_cache_interval", "guidance_end": "sdopt_guidance_end"}


def check_spec(spec: J.JobSpec, settings: ServeSettings, pipeline: Any, names: dict[str, str]) -> None:
    """Refuse what the server's limits or the loop would refuse, before queueing.

    ``names`` maps the loop's field names to the API's (guidance_scale -> cfg_scale).
    """

    def name(field: str) -> str:
        return names.get(field, field)

    if spec.width * spec.height > settings.max_pixels:
        raise RequestError(name("width"), f"{spec.width}x{spec.height} is more than this server's {settings.max_pixels} pixels (--max-pixels)")
    if isinstance(spec.steps, int) and spec.steps > settings.max_steps:
        raise RequestError(name("steps"), f"{name('steps')}={spec.steps}: this server allows at most {settings.max_steps} (--max-steps)")
    if isinstance(spec.n, int) and not 1 <= spec.n <= settings.max_images:
        counted = " (batch_size x n_iter)" if name("num_images") == "batch_size" else ""  # AUTOMATIC1111's: both make the count
        raise RequestError(name("num_images"), f"{spec.n} images{counted}: this server makes 1 to {settings.max_images} per request (--max-images)")
    try:
        with api_fields(_said(names)):  # its messages name the API's fields (cfg_scale=-1.0), not the loop's (guidance_scale=-1.0)
            pipeline.check_request(J.generate_request([spec]))  # the call this job would make alone
    except SdoptError as exc:
        if exc.field is None and quotes_served_file(str(exc), served_folders(settings, pipeline)):
            # A file in --lora-dir that the loop refuses before any call (an empty one: a copy cut short) is the operator's,
            # as the worker says of one it cannot read: this was a 422 telling the client to "give the LoRA file again".
            # A refusal that names a field of the request stays the request's.
            log.error("sdopt serve: a request was refused on a server file: %s", exc)
            raise RequestError(None, f"{exc} {SERVER_FILE}", status=500) from None
        match = _FIELD.match(str(exc))
        field = exc.field or (match.group(1) if match else "body")
        raise RequestError(name("seed" if field == "seeds" else field), str(exc)) from None


def _said(names: dict[str, str]) -> dict[str, str]:
    """``names`` as a message names a value: a field that holds several (OpenAI's size: width and height) by the part the
    value is ("size's width=63", where "size=63" read as a size the client never sent), AUTOMATIC1111's override_settings
    by the setting that holds Clip skip (as its own check says it), not as the whole object."""
    fields = list(names.values())
    return {loop: CLIP_SKIP_SETTING if field == "override_settings" else f"{field}'s {loop}" if fields.count(field) > 1 else field
            for loop, field in names.items()}


def refuse_text_only(pipeline: Any, route: str) -> None:
    """A route that makes pictures from text alone (AUTOMATIC1111's txt2img, OpenAI's generations) on an inpainting
    checkpoint, which repaints only an area of an image: refused naming the route that can run it, in that API's
    fields. The loop's own refusal names fields this route has not (a 422 at loc "mask" of a txt2img request)."""
    if not getattr(pipeline, "inpainting_unet", False):
        return
    where = {"txt2img": "send it to /sdapi/v1/img2img with init_images and a mask (white where to repaint)",
             "generations": "edit an image instead (images.edit, /v1/images/edits) with a mask whose fully transparent "
                            "pixels (alpha 0) are the area to edit"}[route]
    raise RequestError(None, "this server's model is an inpainting checkpoint: it repaints an area of an image that a mask "
                             f"marks and makes no picture from text alone; {where}, or serve a text-to-image checkpoint")


def with_server_defaults(settings: ServeSettings, steps: int | None = None, guidance_scale: float | None = None,
                         scheduler: str | None = None) -> dict[str, Any]:
    """A request's steps, guidance scale and scheduler: its own where it gave them, else the server's
    (sdopt serve --steps, --guidance, --scheduler). OpenAI's API has no such fields: its requests get the server's
    scheduler always, its steps and guidance unless sdopt_steps and sdopt_guidance_scale say."""
    return {"steps": steps or settings.steps, "guidance_scale": settings.guidance_scale if guidance_scale is None else guidance_scale,
            "scheduler": scheduler or settings.scheduler}


def with_model_defaults(settings: ServeSettings, pipeline: Any) -> ServeSettings:
    """``settings`` with the steps and guidance scale sdopt serve was not given set to the model's own
    (sdopt.runtime.request_defaults), the steps no more than --max-steps."""
    import dataclasses

    from sdopt.runtime.request_defaults import request_defaults

    manifest = getattr(pipeline, "manifest", None)
    defaults = request_defaults(getattr(manifest, "model", None) or {}, getattr(manifest, "export", None))
    return dataclasses.replace(
        settings,
        steps=min(defaults.steps, settings.max_steps) if settings.steps is None else settings.steps,
        guidance_scale=defaults.guidance_scale if settings.guidance_scale is None else settings.guidance_scale,
    )


def default_size(pipeline: Any) -> int:
    """The side of a request that does not say (Pipeline.default_size: a static artifact's width, its built one where
    loading lifted the shapes, else the size the model was trained at: 512 for SD 1.5, 64 for the tiny and shapes models)."""
    if hasattr(pipeline, "default_size"):
        return pipeline.default_size[1]
    from sdopt.runtime.request_defaults import default_size as model_size  # a stand-in pipeline (tests)

    return model_size(getattr(pipeline, "manifest", None))[1]


def random_seed() -> int:
    return secrets.randbelow(2**32)


def submit(request: Request, spec: J.JobSpec, api: str, job_id: str | None = None, names: dict[str, str] | None = None,
           continuing: bool = False) -> J.Job:
    """Queue ``spec`` once ``prepare`` has made it ready.
    continuing: the job goes on with a request already accepted (Worker.submit)."""
    prepare(request, spec, names)
    if not continuing:
        refuse_past_timeout(request.app.state.worker, spec, names or {})
    job = J.Job(spec=spec, api=api, fields=_said(names or {}), **({"id": job_id} if job_id else {}))
    return request.app.state.worker.submit(job, continuing=continuing)


def refuse_past_timeout(worker: Worker, spec: J.JobSpec, names: dict[str, str]) -> None:
    """A job that, at the pace this server last ran its kind (size, guidance, ...: Worker.expected_seconds), would run
    past --job-timeout even with nobody queued before it: refused now with the estimate. It was queued, held the worker
    for the whole timeout (a 1024x1024 request on a CPU: 600 s) and was answered 504, its client none the wiser."""
    expected = worker.expected_seconds(spec)
    if expected is None or expected[0] <= worker.job_timeout:
        return
    seconds, per_step = expected
    steps = names.get("steps", "steps")
    raise RequestError(steps, f"{spec.n} image(s) of {spec.width}x{spec.height} at {steps}={spec.steps} would take about "
                              f"{seconds:,.0f} s at this server's recent pace ({per_step:.2g} s a step), past its "
                              f"--job-timeout of {worker.job_timeout:g} s: ask fewer steps, a smaller size or fewer images")


def prepare(request: Request, spec: J.JobSpec, names: dict[str, str] | None = None) -> None:
    """``spec`` made ready to queue: its prompt's LoRA tags taken out into ``spec.loras`` (every API alike; a prompt
    without tags keeps the LoRAs the spec has: the hires fix's second pass, its first's), then checked. Doing it twice
    changes nothing: a request split into several jobs (AUTOMATIC1111's n_iter) is checked whole before the first."""
    from sdopt.serve.loras import take_loras

    worker: Worker = request.app.state.worker
    settings: ServeSettings = request.app.state.settings
    spec.prompt, tagged = take_loras(spec.prompt, settings.lora_dir, (names or {}).get("prompt", "prompt"))
    if tagged is not None:
        spec.loras = tagged
    check_spec(spec, settings, worker.pipeline, names or {})
    if spec.prompt_emphasis and hasattr(worker.pipeline, "prompt_chunks"):
        # A long prompt is read in chunks, and one call's rows all get the most any of them needs: jobs batch only
        # with jobs of as many, so each image is the one it gets alone.
        spec.text_chunks = worker.pipeline.prompt_chunks([spec.prompt, spec.negative_prompt])


DISCONNECT_POLL_S = 0.5  # how often a waiting route looks whether its client is still there


async def wait(job: J.Job, request: Request) -> J.Job:
    """The finished job, for a route that answers with its images. A client that hangs up first (a closed
    connection, a timed-out HTTP client) gets its job cancelled: nobody would read the images, and the job
    would hold a queue slot and the worker until it ended."""
    done = asyncio.wrap_future(job.future)
    while not (await asyncio.wait({done}, timeout=DISCONNECT_POLL_S))[0]:
        if await request.is_disconnected():
            request.app.state.worker.cancel(job, "the client disconnected")
            break
    return await done


def failure_status(job: J.Job) -> int:
    """The HTTP status for a job that ended without its images, for the APIs that wait for them."""
    if job.status == J.CANCELLED and job.error == SHUTTING_DOWN:
        return 503
    return {J.TIMED_OUT: 504, J.CANCELLED: 409}.get(job.status, 500 if job.internal_error else 422)


def not_made(job: J.Job) -> RequestError:
    """The error for a job that ended without its images. Its field is the prompt only where the request was refused
    (422); a timeout, a cancel, the server's own failure or its shutdown is about no field of the request (it named
    "prompt" as their param, which a client would read as the prompt being wrong)."""
    status = failure_status(job)
    return RequestError("prompt" if status == 422 else None, f"the image was not made: {job.status} ({job.error})", status=status)
