"""AUTOMATIC1111's API (``/sdapi/v1``, which SD.Next also speaks), field for field: its routes.

The request models (a1111_models.py) list the fields AUTOMATIC1111 builds from its processing classes, with the
same defaults. Fields sdopt does not implement (scripts, face restoration, ...) are accepted, as AUTOMATIC1111
accepts them, and named in ``info["sdopt_ignored"]`` when they were set to something that would change the image
there (a1111_fields.py). Unknown fields (extensions' own) are accepted and named the same way.

A request is AUTOMATIC1111's batch count of batches: ``n_iter`` jobs of ``batch_size`` images each, queued one
after another (the seeds go on from one to the next, as there), each batching with other requests' jobs.
``/sdapi/v1/skip`` ends the job running now and its request goes on with its next iteration, answering with the
images made (the skipped seeds in ``info["sdopt_skipped_seeds"]``, ``interrupted`` false); ``/sdapi/v1/interrupt``
ends the request, which answers with the images of the iterations finished before and ``info["interrupted"] = true``.
Both act on what runs now of this API's requests, not on queued ones (nor on native or OpenAI jobs). The hires fix runs a request's images together, so a skip ends
it whole (no images, not interrupted).

Differences a client can rely on: ``force_task_id`` becomes the first iteration's job id (``info["task_id"]``;
``GET /v1/jobs/{id}`` follows that job, ``GET /sdapi/v1/progress?id_task=ID`` the request's iteration running now,
``job_no`` its index). What the server has (its model, samplers, upscalers, options, ...) is listed by
``api_a1111_lists.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from sdopt.os_text import readable
from sdopt.request import DEFAULT_STRENGTH, MAX_SEED
from sdopt.serve import hires, inpaint_area, jobs as J
from sdopt.serve.a1111_fields import A1111_NAMES, apply_infotext, eta_for, hires_scheduler, ignored_fields, scheduler_for
from sdopt.serve.a1111_models import A1111_SIDE, Img2ImgRequest, ImagesResponse, PngInfoRequest, ProcessingRequest, Txt2ImgRequest
from sdopt.serve.api_a1111_lists import CLIP_SKIP_SETTING, check_clip_skip, check_held_options
from sdopt.serve.errors import RequestError
from sdopt.serve.resize_modes import MODES, resize
from sdopt.serve.submission import check_spec, failure_status, not_made, prepare, random_seed, refuse_past_timeout, refuse_text_only, submit, wait
from sdopt.serve.images import decode_image, encode_png, flatten

router = APIRouter(tags=["automatic1111"])


def _clip_skip_ignored(request: Request, spec: J.JobSpec) -> list[str]:
    """Clip skip asked of a model whose family reads fixed text-encoder layers (SDXL: AUTOMATIC1111 ignores it too)."""
    reads = getattr(getattr(request.app.state.worker.pipeline, "family", None), "reads_clip_skip", True)  # a stand-in: True
    return [f"override_settings.{CLIP_SKIP_SETTING}"] if spec.clip_skip > 1 and not reads else []


def clip_skip(request: Request, body: ProcessingRequest) -> int:
    """The request's Clip skip: its override_settings', else what POST /sdapi/v1/options set (1 until then), as AUTOMATIC1111."""
    if CLIP_SKIP_SETTING in (body.override_settings or {}):
        return check_clip_skip(body.override_settings[CLIP_SKIP_SETTING], "override_settings")
    return request.app.state.clip_skip


def _side(value: int | None) -> int:
    """A width or height as AUTOMATIC1111 takes it: null is its default, 512; 0 is refused by the loop's check."""
    return A1111_SIDE if value is None else value


def _batch_size(body: ProcessingRequest) -> int:
    return 1 if body.batch_size is None else body.batch_size


def _spec(request: Request, body: ProcessingRequest, init=None, mask=None, strength: float = DEFAULT_STRENGTH) -> J.JobSpec:
    if body.seed is not None and body.seed < -1:  # AUTOMATIC1111 draws from -5 as a seed of its own; it was a random one here
        raise RequestError("seed", f"seed={body.seed}: give -1 for a random seed (said in info.all_seeds), or one from 0 to {MAX_SEED}")
    seed = body.seed if body.seed is not None and body.seed >= 0 else random_seed()
    for name in ("batch_size", "n_iter"):
        if getattr(body, name) is not None and getattr(body, name) < 1:
            raise RequestError(name, f"{name}={getattr(body, name)}: give 1 or more")
    n = _batch_size(body) * (1 if body.n_iter is None else body.n_iter)
    if seed + n - 1 > MAX_SEED:  # image k is seed + k: the loop's refusal named seeds=[...], which the client never sent
        raise RequestError("seed", f"seed={seed}: its {n} images take seeds {seed} to {seed + n - 1}, past {MAX_SEED}: give a seed of "
                                   f"at most {MAX_SEED - n + 1}, or -1 for a random one")
    check_held_options(request, body.override_settings or {}, "override_settings")  # as POST /sdapi/v1/options
    scheduler = scheduler_for(body)
    return J.JobSpec(
        prompt=body.prompt or "", negative_prompt=body.negative_prompt or "", seed=seed, n=n,
        steps=body.steps if body.steps is not None else 50, guidance_scale=body.cfg_scale if body.cfg_scale is not None else 7.0,
        width=_side(body.width), height=_side(body.height), scheduler=scheduler, eta=eta_for(body, scheduler),
        init_image=init, mask_image=mask, strength=strength, cache_interval=body.sdopt_cache_interval, guidance_end=body.sdopt_guidance_end,
        prompt_emphasis=True,  # AUTOMATIC1111 reads every prompt's (word:1.2) ("Emphasis: Original", its default)
        clip_skip=clip_skip(request, body),
    )


async def _run(request: Request, body: ProcessingRequest, spec: J.JobSpec, finish=None) -> dict[str, Any]:
    """The request's n_iter iterations, one job of batch_size images each, one after another, as AUTOMATIC1111 runs
    its batch count: a skipped iteration is left out and the next one runs; an interrupted (or disconnected) one ends
    the request with the images made before it; a failed one fails it.
    ``finish``: what becomes of each image before it is answered (inpainting's paste and overlay)."""
    import dataclasses

    # The whole request checked (batch_size x n_iter images) before any of it runs. Off the event loop, as each submit
    # below: counting a long prompt's chunks takes a while, and waits for the tokenizer while the worker encodes a batch.
    await asyncio.to_thread(prepare, request, spec, A1111_NAMES)
    batch = _batch_size(body)
    jobs: list[J.Job] = []
    images: list = []
    for first_seed in range(spec.seed, spec.seed + spec.n, batch):
        part = dataclasses.replace(spec, seed=first_seed, n=batch)
        job = await asyncio.to_thread(submit, request, part, "a1111", job_id=None if jobs else body.force_task_id or None, names=A1111_NAMES,
                                      continuing=bool(jobs))
        job.iterations = spec.n // batch  # progress?id_task= counts the request's iterations, as AUTOMATIC1111's job_count
        if jobs:
            jobs[-1].continued_by = job.id  # GET /sdapi/v1/progress?id_task= follows the request to it
        jobs.append(await wait(job, request))
        if job.status == J.SUCCEEDED:  # inpainting's paste and overlay: on the init image, up to 16 megapixels, off the loop
            images += await asyncio.to_thread(lambda: [finish(im) for im in job.images]) if finish else job.images
        elif not job.skipped:
            break
    return await asyncio.to_thread(_answer, request, body, spec, jobs, images)  # its PNGs encoded off the event loop


def _answer(request: Request, body: ProcessingRequest, spec: J.JobSpec, jobs: list[J.Job], images: list, info_over: dict | None = None) -> dict[str, Any]:
    """The response for a request's finished jobs and the images it answers with: those made before an interrupt
    (info.interrupted) and around what was skipped; the first job names the request, the last says how it ended.
    info_over: info's values where they are not the job's (the hires fix's second pass).
    Called in a thread: encoding the PNGs takes seconds for a large batch or an inpainted 16-megapixel picture, in
    which the event loop would answer no other client."""
    last = jobs[-1]
    if last.status not in (J.SUCCEEDED, J.CANCELLED) or failure_status(last) == 503:  # 503: the server is shutting down
        raise not_made(last)
    interrupted = any(job.status == J.CANCELLED and not job.skipped for job in jobs)
    params = body.model_dump()
    if not getattr(body, "include_init_images", False):  # AUTOMATIC1111 echoes the input images only when asked to
        for name in ("init_images", "mask"):
            if name in params:
                params[name] = None
    info = {**_info(request, jobs, spec, body, interrupted, images), **(info_over or {})}
    return {"images": [encode_png(im) for im in images] if body.send_images else [], "parameters": params, "info": json.dumps(info)}


def _info(request: Request, jobs: list[J.Job], spec: J.JobSpec, body: ProcessingRequest, interrupted: bool, images: list) -> dict[str, Any]:
    """AUTOMATIC1111's Processed.js(), every key of it (clients index it), then sdopt's own (sdopt_*, task_id, interrupted)."""
    from sdopt import __version__

    n, job = len(spec.seeds), jobs[0]
    return {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * n,
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * n,
        "seed": spec.seed,
        "all_seeds": spec.seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": body.sampler_name or body.sampler_index,
        "cfg_scale": spec.guidance_scale,
        "steps": spec.steps,
        "batch_size": body.batch_size or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": request.app.state.model_name,
        "sd_model_hash": getattr(request.app.state.worker.pipeline, "model_hash", None),  # the images' "Model hash"
        "sd_vae_name": None,  # the artifact's own VAE, as AUTOMATIC1111 says of a checkpoint's baked-in one
        "sd_vae_hash": None,
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": spec.strength if spec.init_image is not None else None,
        "extra_generation_params": {},  # the infotexts carry every parameter
        "index_of_first_image": 0,
        "infotexts": [image.info.get("parameters") for image in images],  # what each image's PNG carries (sdopt.infotext)
        "styles": body.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        # A1111's name for a 9-channel inpainting UNet (a stand-in pipeline in tests has none)
        "is_using_inpainting_conditioning": bool(getattr(request.app.state.worker.pipeline, "inpainting_unet", False)),
        "version": f"sdopt {__version__}",  # as the infotexts' Version
        "task_id": job.id,
        "interrupted": interrupted,
        "sdopt_skipped_seeds": [seed for skipped in jobs if skipped.skipped for seed in skipped.spec.seeds],  # /sdapi/v1/skip left them out
        "sdopt_task_ids": [each.id for each in jobs],  # one job per iteration (n_iter) that ran
        "clip_skip": spec.clip_skip,  # AUTOMATIC1111's Processed.js() has it
        "sdopt_ignored": ignored_fields(body, spec.scheduler) + _clip_skip_ignored(request, spec),
        # what the pipeline warned of for this request (a prompt cut at the text encoder's tokens, ...), once per iteration
        "sdopt_warnings": list(dict.fromkeys(w for each in jobs for w in each.warnings)),
        "sdopt_scheduler": spec.scheduler,
        "sdopt_batch_size": job.batch_size,
        "sdopt_loras": {readable(Path(f).stem): w for f, w in (spec.loras or {}).items()},
        "sdopt_cache_interval": spec.cache_interval,  # None: the artifact's default
        "sdopt_guidance_end": spec.guidance_end,
    }


@router.post("/sdapi/v1/txt2img", response_model=ImagesResponse)
async def txt2img(request: Request, body: Txt2ImgRequest) -> dict[str, Any]:
    refuse_text_only(request.app.state.worker.pipeline, "txt2img")
    apply_infotext(body)
    if body.enable_hr:
        return await _run_hires(request, body, _spec(request, body))
    return await _run(request, body, _spec(request, body))


async def _run_hires(request: Request, body: Txt2ImgRequest, spec: J.JobSpec) -> dict[str, Any]:
    """The hires fix (serve/hires.py): the first pass, then a second-pass job per image; both checked before either runs."""
    scheduler = hires_scheduler(body, spec.scheduler)
    size = hires.size_field(body)
    names = {**A1111_NAMES, "steps": "hr_second_pass_steps", "width": size, "height": size, "strength": "denoising_strength",
             **({"prompt": "hr_prompt"} if body.hr_prompt else {})}
    settings = request.app.state.settings
    max_pixels = settings.max_pixels
    pipeline = request.app.state.worker.pipeline
    model = getattr(getattr(pipeline, "manifest", None), "model", None)
    [blank] = hires.second_pass(body, spec, scheduler, max_pixels, model=model)  # the first seed's second pass, on a blank start
    check_spec(blank, settings, pipeline, names)
    # The second pass (twice the size) is what outlasts --job-timeout; its jobs go on with an accepted request, so are
    # not estimated when submitted: a request refused now has not first held the worker for a first pass to be thrown away
    refuse_past_timeout(request.app.state.worker, blank, names)
    if body.hr_prompt:  # its LoRA tags, before the first pass runs (the first prompt's are checked when it is submitted)
        from sdopt.serve.loras import take_loras

        take_loras(body.hr_prompt, settings.lora_dir, "hr_prompt")
    # Off the event loop (submission.submit counts a long prompt's chunks; the second passes upscale the first's images)
    first = await wait(await asyncio.to_thread(submit, request, spec, "a1111", job_id=body.force_task_id or None, names=A1111_NAMES), request)
    if first.status != J.SUCCEEDED:
        return await asyncio.to_thread(_answer, request, body, spec, [first], first.images)
    seconds = await asyncio.to_thread(lambda: [submit(request, second, "a1111", names=names, continuing=True)
                                               for second in hires.second_pass(body, spec, scheduler, max_pixels, first, model)])
    done = await _all_or_none(seconds, request)
    # What ended the request: a failure before the cancellations it caused (an interrupt cancels them all alike).
    failed = next((job for job in done if job.status not in (J.SUCCEEDED, J.CANCELLED)), None) or next((job for job in done if job.status != J.SUCCEEDED), None)
    images = [] if failed else [job.images[0] for job in done]
    for image, made_from, job in zip(images, first.images, done):  # AUTOMATIC1111's parameters of a hires image
        image.info["parameters"] = hires.parameters(made_from.info.get("parameters", ""), body, job.spec)
    second = done[0].spec
    return await asyncio.to_thread(_answer, request, body, spec, [failed or first], images, {
        "width": second.width, "height": second.height, "denoising_strength": second.strength,
        "sdopt_hires": {"first_pass": f"{spec.width}x{spec.height}", "upscaler": hires.upscaler(body.hr_upscaler)[0],
                        "second_pass_steps": second.steps, "task_ids": [job.id for job in done]}})


async def _all_or_none(jobs: list[J.Job], request: Request) -> list[J.Job]:
    """The jobs of one request, ended; once one ends without its image (interrupted, failed, timed out), the others are
    cancelled at once: the request answers with no images then, and they would run for nothing."""
    waiting = {asyncio.ensure_future(wait(job, request)): job for job in jobs}
    while waiting:
        ended, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for future in ended:
            job = waiting.pop(future)
            if job.status != J.SUCCEEDED:
                for other in waiting.values():  # a skip skips the request whole, an interrupt interrupts it
                    request.app.state.worker.cancel(other, job.error if job.status == J.CANCELLED else f"another image of the request {job.status}",
                                                    skipped=job.skipped)
    return jobs


# The most a mask's blur radius may be: AUTOMATIC1111's slider stops at 64. PIL refuses a radius past ~2**31 (and one
# past 2**63 overflows to "must be >= 0"), which was a ValueError answered 500.
MAX_MASK_BLUR = 1024


def _check_mask_sizes(body: Img2ImgRequest) -> None:
    """The mask's blur radii and its padding (given, or from the infotext) are 0 or more pixels, the blur at most
    MAX_MASK_BLUR: a negative blur was applied as none and written into the image's parameters as it came, a negative
    padding taken as 0."""
    for name, none in (("mask_blur", "no blur"), ("mask_blur_x", "no blur"), ("mask_blur_y", "no blur"), ("inpaint_full_res_padding", "no padding")):
        value = getattr(body, name)
        if value is not None and value < 0:
            raise RequestError(name, f"{name}={value}: give 0 or more pixels (0: {none})")
        if value is not None and none == "no blur" and value > MAX_MASK_BLUR:
            raise RequestError(name, f"{name}={value}: give at most {MAX_MASK_BLUR} pixels (AUTOMATIC1111's slider stops at 64)")


def _blur(body: Img2ImgRequest) -> int:
    """The mask's Gaussian blur radius: mask_blur, else the larger of AUTOMATIC1111's x and y radii."""
    return body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x or 0, body.mask_blur_y or 0)


def _mask(request: Request, body: Img2ImgRequest, size: tuple[int, int]):
    """The mask as the loop takes it: grayscale, white = repaint, rounded, inverted and blurred as asked
    (AUTOMATIC1111's order: create_binary_mask, invert, blur)."""
    from PIL import ImageFilter, ImageOps

    settings = request.app.state.settings
    mask = decode_image(body.mask, "mask", settings.max_image_bytes, settings.max_input_pixels)
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")  # AUTOMATIC1111's create_binary_mask: a transparent mask means its alpha
    mask = mask.convert("L")
    if mask.size != size:
        raise RequestError("mask", f"the mask is {mask.width}x{mask.height} but the init image is {size[0]}x{size[1]}: send them the same size")
    if body.mask_round is not False:  # mask_round (default): every pixel repainted or kept, as AUTOMATIC1111
        mask = mask.point(lambda level: 255 if level > 128 else 0)
    if body.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    blur = _blur(body)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


@router.post("/sdapi/v1/img2img", response_model=ImagesResponse)
async def img2img(request: Request, body: Img2ImgRequest) -> dict[str, Any]:
    # Off the event loop, which answers every other client meanwhile (progress, /metrics, their requests): decoding
    # images up to the input-pixel limit (16 x --max-pixels), the mask's blur, the resize and the inpainting fill take a second or more.
    spec, finish = await asyncio.to_thread(_img2img_job, request, body)
    return await _run(request, body, spec, finish=finish)


def _img2img_job(request: Request, body: Img2ImgRequest) -> tuple[J.JobSpec, Any]:
    """An img2img request's job, checked, and what becomes of each image it makes (inpainting's paste and overlay;
    None for img2img of the whole picture)."""
    settings = request.app.state.settings
    apply_infotext(body)
    if not body.init_images:
        raise RequestError("init_images", "give one init image (base64 PNG or JPEG) in init_images")
    if len(body.init_images) > 1:
        # AUTOMATIC1111 gives each image of the batch its own init image (up to batch_size of them); a job here has one, and
        # making every image from the first while the others were dropped unsaid answered a different request
        raise RequestError("init_images", f"init_images holds {len(body.init_images)} images: sdopt makes a request's images from one "
                                          "init image; send one per request (batch_size images are made from it)")
    import dataclasses

    if body.resize_mode not in (None, *MODES):
        raise RequestError("resize_mode", f"resize_mode={body.resize_mode}: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale")
    if body.mask:
        _check_mask_sizes(body)
    # Transparent parts on white, as AUTOMATIC1111's img2img (its img2img_background_color), not what lies under them
    init = flatten(decode_image(body.init_images[0], "init_images", settings.max_image_bytes, settings.max_input_pixels))
    mask = _mask(request, body, init.size) if body.mask else None
    strength = body.denoising_strength if body.denoising_strength is not None else 0.75
    spec = _spec(request, body, init, mask, strength)
    check_spec(spec, settings, request.app.state.worker.pipeline, A1111_NAMES)  # the size is sound before pictures are made that size
    mode, size = body.resize_mode or 0, (spec.width, spec.height)
    if mask is None:
        return dataclasses.replace(spec, init_image=resize(init, mode, *size)), None
    fill = body.inpainting_fill if body.inpainting_fill is not None else inpaint_area.FILL
    if fill not in (inpaint_area.FILL, inpaint_area.ORIGINAL, *inpaint_area.LATENT_FILLS):
        raise RequestError("inpainting_fill", f"inpainting_fill={fill}: 0 fill, 1 original, 2 latent noise, 3 latent nothing")
    area = inpaint_area.prepare(init, mask, *size, only_masked=bool(body.inpaint_full_res), padding=body.inpaint_full_res_padding or 0,
                                resize_mode=mode, fill_mode=fill)
    spec = dataclasses.replace(spec, init_image=area.init, mask_image=area.mask, masked_content=inpaint_area.LATENT_FILLS.get(fill, "original"))
    said = inpaint_area.parameters_of(_blur(body), bool(body.inpaint_full_res), body.inpaint_full_res_padding or 0, fill)

    def finish(image):
        from sdopt.infotext import KEY, with_pairs

        out = inpaint_area.finish(image, area)
        if isinstance(out.info.get(KEY), str):  # its parameters, with what was done around the loop (AUTOMATIC1111's keys)
            out.info[KEY] = with_pairs(out.info[KEY], said)
        return out

    return spec, finish


@router.get("/sdapi/v1/progress")
def progress(request: Request, skip_current_image: bool = False, id_task: str | None = None) -> dict[str, Any]:
    worker = request.app.state.worker
    job, before, job_no = None, None, 0
    current = list(worker.current)
    running = [each for each in current if not each.ended]  # one cancelled out of a batch is not what runs: its mates run on
    if id_task is not None:
        job = worker.jobs.get(id_task)
        while job is not None and job.continued_by in worker.jobs:  # the request's iteration running now (n_iter)
            before, job, job_no = job, worker.jobs[job.continued_by], job_no + 1
    else:  # the running call's first job still wanted
        job = running[0] if running else current[0] if current else None
    queued = worker.queue_depth
    if job is None:
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": queued, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    image = None
    if not skip_current_image and job.preview_png:
        import base64

        image = base64.b64encode(job.preview_png).decode("ascii")
    state = {
        # as AUTOMATIC1111's: skipped from the skip until the request's next iteration starts
        "skipped": job.skipped or (before is not None and before.skipped and job.status == J.QUEUED),
        "interrupted": job.status == J.CANCELLED and not job.skipped,
        "stopping_generation": False,  # AUTOMATIC1111's "finish the image, then stop": sdopt has no such call
        # The id of the job followed by id_task (the asker's own); else AUTOMATIC1111's label, not the running job's id,
        # which let any client that polled progress read that job (another client's prompt and images, /v1/jobs/ID)
        # and cancel it with DELETE (qa86)
        "job": job.id if id_task is not None else f"Batch {job_no + 1} out of {job.iterations}",
        # a request followed by id_task: its iterations (AUTOMATIC1111's job_count is the batch count); else the server's jobs
        "job_count": job.iterations if id_task is not None else queued + len(running),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "job_no": job_no,
        "sampling_step": job.step,
        "sampling_steps": job.steps or job.spec.steps,
        "status": job.status,
    }
    # As AUTOMATIC1111's: over the request's iterations, those before this one done
    done = (job_no + job.progress) / job.iterations if id_task is not None else job.progress
    return {"progress": done, "eta_relative": job.eta_seconds() or 0.0, "state": state, "current_image": image, "textinfo": None}


# AUTOMATIC1111's interrupt and skip name no job: its server has one user. Here they end what runs now of this API's
# requests only. A native or OpenAI client batched into the same call never asked for AUTOMATIC1111's single-user
# stop, and has its own way to end its job (DELETE /v1/jobs/{id}; hanging up): it lost its images to another client's
# Stop button. Among AUTOMATIC1111 clients nothing tells whose job is whose (one --api-key is everyone's, and behind a
# proxy every request comes from its address): one that shares the server ends its own request alone by
# DELETE /v1/jobs/{force_task_id} (docs/serve.md).
@router.post("/sdapi/v1/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    request.app.state.worker.interrupt(api="a1111")
    return {}


@router.post("/sdapi/v1/skip")
def skip(request: Request) -> dict[str, Any]:
    """End the iteration running now; its request goes on with the next (interrupt ends the request)."""
    request.app.state.worker.skip(api="a1111")
    return {}


@router.post("/sdapi/v1/png-info")
def png_info(request: Request, body: PngInfoRequest) -> dict[str, Any]:
    """An image's generation parameters, as AUTOMATIC1111's PNG Info reads them: ``info`` the text (a PNG's text
    chunk, a JPEG's or WebP's EXIF UserComment), ``parameters`` its keys and values, ``items`` the image's other text
    chunks."""
    from sdopt.infotext import KEY, parameters_text, parse_parameters

    settings = request.app.state.settings
    image = decode_image(body.image, "image", settings.max_image_bytes, settings.max_input_pixels)
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != KEY}
    text = parameters_text(image) or ""
    return {"info": text, "items": texts, "parameters": parse_parameters(text) if text else {}}
