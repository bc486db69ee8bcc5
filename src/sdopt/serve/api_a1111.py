"""AUTOMATIC1111's API (``/sdapi/v1``, which SD.Next also speaks), field for field.

The request models list the fields AUTOMATIC1111 builds from its processing
classes (modules/api/models.py over modules/processing.py); they take the same
defaults. Fields sdopt does not implement (hires fix, scripts, face
restoration, ...) are accepted, as AUTOMATIC1111 accepts them, and named in
``info["sdopt_ignored"]`` when they were set to something that would change the
image there. Unknown fields (extensions' own) are accepted and named the same way.

Differences a client can rely on: ``force_task_id`` becomes the job id (``info["task_id"]``;
``GET /v1/jobs/{id}`` and ``GET /sdapi/v1/progress?id_task=ID`` follow it), and
``/sdapi/v1/interrupt`` stops only what runs now, answering the interrupted
requests with no images and ``info["interrupted"] = true``. What the server has (its
model, samplers, upscalers, options, ...) is listed by ``api_a1111_lists.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdopt.runtime.schedulers import A1111_SAMPLERS
from sdopt.serve import hires, inpaint_area, jobs as J
from sdopt.serve.api_a1111_lists import CLIP_SKIP_SETTING, check_clip_skip
from sdopt.serve.errors import RequestError
from sdopt.serve.resize_modes import LATENT_UPSCALE, MODES, resize
from sdopt.serve.submission import (LEVER_NAMES, cache_interval_field, check_spec, failure_status, guidance_end_field, random_seed, submit,
                                    wait)
from sdopt.serve.images import decode_image, encode_png

router = APIRouter(tags=["automatic1111"])

A1111_NAMES = {"clip_skip": "override_settings", "guidance_scale": "cfg_scale", "num_images": "batch_size", "scheduler": "sampler_name", "strength": "denoising_strength", "mask_image": "mask",
               "init_image": "init_images", **LEVER_NAMES}


class _Processing(BaseModel):
    """StableDiffusionProcessing's API fields, with AUTOMATIC1111's defaults."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = Field(default_factory=dict)
    force_task_id: str | None = Field(None, max_length=200)
    infotext: str | None = None
    # sdopt's own: AUTOMATIC1111 has no such fields (and, like it, ignores what it does not know).
    sdopt_cache_interval: int | None = cache_interval_field()
    sdopt_guidance_end: float | None = guidance_end_field()


class Txt2ImgRequest(_Processing):
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class Img2ImgRequest(_Processing):
    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = Field(False, exclude=True)
    denoising_strength: float | None = 0.75


class ImagesResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="base64 PNG, no data: prefix")
    parameters: dict
    info: str = Field(description="a JSON string, as AUTOMATIC1111 sends it")


# Fields this server uses (or that change nothing here); any other field set away from
# AUTOMATIC1111's default is reported as ignored.
_USED = {
    "prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "batch_size", "n_iter", "steps",
    "cfg_scale", "width", "height", "send_images", "save_images", "force_task_id", "do_not_save_samples",
    "do_not_save_grid", "override_settings_restore_afterwards", "disable_extra_networks", "comments", "infotext",
    "init_images", "mask", "denoising_strength", "inpainting_mask_invert", "mask_blur", "mask_blur_x", "mask_blur_y",
    "include_init_images", "resize_mode", "mask_round", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_fill",
    "sdopt_cache_interval", "sdopt_guidance_end",
    # the hires fix (serve/hires.py); hr_upscaler is said below
    "enable_hr", "hr_scale", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_prompt",
    "hr_negative_prompt", "hr_upscaler",
}
# Values that change nothing in AUTOMATIC1111 either (clients such as webuiapi send them).
_NEUTRAL = {"s_noise": 1.0, "initial_noise_multiplier": 1.0, "hr_checkpoint_name": "Use same checkpoint"}
# Read by AUTOMATIC1111 only for instruct-pix2pix ("edit") models, which sdopt does not run.
_EDIT_MODELS_ONLY = {"image_cfg_scale"}
# eta is read here by DDIM and TCD. AUTOMATIC1111's ancestral samplers scale their fresh noise by it too; sdopt's
# Euler a always adds the full noise (eta 1), so another eta for it is listed as ignored.
_ETA_FIXED = {"euler_a": 1.0}


def _hires_only(name: str) -> bool:
    """Fields AUTOMATIC1111 reads only with enable_hr (clients send them with their defaults)."""
    return name.startswith(("hr_", "firstphase_"))



def _schedule_unapplied(schedule: str | None, scheduler: str | None) -> bool:
    """AUTOMATIC1111's schedule type is applied where sdopt has the variant (Karras for DPM++ 2M): whether ``schedule``
    asked for one that ``scheduler`` (what the sampler and schedule resolved to) is not."""
    return (schedule or "automatic").lower() not in ("automatic", hires.SAME_SCHEDULE.lower()) and scheduler is not None \
        and A1111_SAMPLERS.get(scheduler, ("", None))[1] is None


def _clip_skip_ignored(request: Request, spec: J.JobSpec) -> list[str]:
    """Clip skip asked of a model whose family reads fixed text-encoder layers (SDXL: AUTOMATIC1111 ignores it too)."""
    reads = getattr(getattr(request.app.state.worker.pipeline, "family", None), "reads_clip_skip", True)  # a stand-in: True
    return [f"override_settings.{CLIP_SKIP_SETTING}"] if spec.clip_skip > 1 and not reads else []


def _combined_unapplied(sampler: str) -> bool:
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import unapplied_schedule

    try:
        return unapplied_schedule(sampler) is not None
    except SdoptError:  # an unknown sampler: refused on its own
        return False


def ignored_fields(body: _Processing, scheduler: str | None) -> list[str]:
    defaults = type(body).model_fields
    out = []
    for name in sorted(body.model_fields_set | set(body.model_extra or {})):
        if name in _USED or name in _EDIT_MODELS_ONLY:
            continue
        if name == "scheduler":
            if _schedule_unapplied(body.scheduler, scheduler):
                out.append(name)
            continue
        if name == "hr_scheduler":
            if getattr(body, "enable_hr", False) and _schedule_unapplied(body.hr_scheduler, hires_scheduler(body, scheduler)):
                out.append(name)
            continue
        if name == "override_settings":  # by key: what is applied is not ignored
            out += [f"override_settings.{key}" for key in sorted(body.override_settings or {}) if key != CLIP_SKIP_SETTING]
            continue
        if name == "eta":  # only DDIM and ancestral samplers read it in AUTOMATIC1111 (DDIM and TCD here)
            if body.eta is not None and scheduler in _ETA_FIXED and body.eta != _ETA_FIXED[scheduler]:
                out.append(name)
            continue
        if _hires_only(name) and not getattr(body, "enable_hr", False):  # inert in AUTOMATIC1111 too
            continue
        value = getattr(body, name, None)
        if name in _NEUTRAL and value == _NEUTRAL[name]:
            continue
        if name in defaults:
            default = defaults[name].get_default(call_default_factory=True)
            if value == default or value in (None, "", [], {}, 0, False):
                continue
        out.append(name)
    sampler = body.sampler_name or body.sampler_index
    if sampler and sampler.endswith(" Karras") and "scheduler" not in out and _combined_unapplied(sampler):
        out.append("sampler_name")  # an older combined name whose Karras variant sdopt lacks ("LMS Karras": LMS)
    if isinstance(body, Img2ImgRequest):
        out = sorted(out + _img2img_unapplied(body))
    if getattr(body, "enable_hr", False):
        if not hires.upscaler(body.hr_upscaler)[1]:  # a model upscaler (ESRGAN, ...): Lanczos here
            out.append("hr_upscaler")
    if body.infotext:  # what the infotext says that no field here takes (AUTOMATIC1111's Clip skip, hires fix, RNG, ...)
        from sdopt.infotext import parse_parameters, unapplied

        # applied by hires.from_parameters, inpaint_area.from_parameters
        taken = {*hires.INFOTEXT_FIELDS, hires.RESIZE} if isinstance(body, Txt2ImgRequest) else set(inpaint_area.INFOTEXT_FIELDS)
        out += [f"infotext: {key}" for key in unapplied(parse_parameters(body.infotext)) if key not in taken]
    return out


def _img2img_unapplied(body: Img2ImgRequest) -> list[str]:
    """img2img fields whose value AUTOMATIC1111 would act on and sdopt does not (listed whether sent or its default)."""
    out = ["resize_mode"] if body.resize_mode == LATENT_UPSCALE else []  # done as "Just resize"
    if body.mask:
        out += ["mask_round"] if body.mask_round is False else []  # the loop binarizes the mask as Diffusers does
    return out


def scheduler_for(body: _Processing, field: str = "sampler_name") -> str | None:
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import from_a1111

    name = body.sampler_name or body.sampler_index
    if name in (None, ""):
        return None
    try:
        return from_a1111(name, body.scheduler)
    except SdoptError as exc:
        raise RequestError(field, str(exc)) from None


def hires_scheduler(body: Txt2ImgRequest, first: str | None) -> str | None:
    """The hires pass's scheduler: ``hr_sampler_name`` with ``hr_scheduler`` (AUTOMATIC1111's "Use same ..." or
    nothing: the first pass's sampler, ``first``, and schedule type)."""
    sampler, schedule = hires.chosen(body.hr_sampler_name, hires.SAME_SAMPLER), hires.chosen(body.hr_scheduler, hires.SAME_SCHEDULE)
    if sampler is None and schedule is None:
        return first
    update = {"sampler_name": sampler or body.sampler_name or body.sampler_index, "scheduler": schedule or body.scheduler}
    return scheduler_for(body.model_copy(update=update), "hr_sampler_name" if sampler else "hr_scheduler")


def _eta(body: _Processing, scheduler: str | None) -> float | None:
    """The request's eta where the sampler reads it (clients such as webuiapi send eta 1 with every sampler)."""
    from sdopt.runtime.schedulers import scheduler_class, takes_eta

    return body.eta if scheduler is None or takes_eta(scheduler_class(scheduler)) else None


def apply_infotext(body: _Processing) -> None:
    """AUTOMATIC1111's ``infotext`` field: the generation parameters of an image (what its PNGs carry) fill every field
    the request does not set itself, so an image sdopt or AUTOMATIC1111 made can be asked for again."""
    if not body.infotext:
        return
    from sdopt.errors import SdoptError
    from sdopt.infotext import parse_parameters, request_fields

    parsed = parse_parameters(body.infotext)
    try:
        fields = request_fields(parsed)
    except SdoptError as exc:
        raise RequestError("infotext", f"infotext: {exc}") from None
    given = set(body.model_fields_set)
    fields.pop("num_images", None)  # a batch drawn from one seed: this API draws each image from its own
    if "clip_skip" in fields:  # AUTOMATIC1111 maps "Clip skip" to this setting; the request's own override wins
        body.override_settings = {CLIP_SKIP_SETTING: fields.pop("clip_skip"), **(body.override_settings or {})}
    for name, value in fields.items():
        field = A1111_NAMES.get(name, name)  # the sampler as sdopt's name (with its schedule type), which sampler_name takes
        if field not in given and field in type(body).model_fields:
            setattr(body, field, value)
    if isinstance(body, Txt2ImgRequest):  # a hires image's parameters: the hires fix again
        hires.from_parameters(body, parsed, given)
    elif isinstance(body, Img2ImgRequest):  # an inpainted image's: its mask blur, area and masked content
        inpaint_area.from_parameters(body, parsed, given)


def clip_skip(request: Request, body: _Processing) -> int:
    """The request's Clip skip: its override_settings', else what POST /sdapi/v1/options set (1 until then), as AUTOMATIC1111."""
    if CLIP_SKIP_SETTING in (body.override_settings or {}):
        return check_clip_skip(body.override_settings[CLIP_SKIP_SETTING], "override_settings")
    return request.app.state.clip_skip


def _side(value: int | None) -> int:
    """A width or height as AUTOMATIC1111 takes it: null is its default, 512; 0 is refused by the loop's check."""
    return 512 if value is None else value


def _spec(request: Request, body: _Processing, init=None, mask=None, strength: float = 0.8) -> J.JobSpec:
    seed = body.seed if body.seed is not None and body.seed >= 0 else random_seed()
    n = (1 if body.batch_size is None else body.batch_size) * (1 if body.n_iter is None else body.n_iter)
    scheduler = scheduler_for(body)
    return J.JobSpec(
        prompt=body.prompt or "", negative_prompt=body.negative_prompt or "", seed=seed, n=n,
        steps=body.steps if body.steps is not None else 50, guidance_scale=body.cfg_scale if body.cfg_scale is not None else 7.0,
        width=_side(body.width), height=_side(body.height), scheduler=scheduler, eta=_eta(body, scheduler),
        init_image=init, mask_image=mask, strength=strength, cache_interval=body.sdopt_cache_interval, guidance_end=body.sdopt_guidance_end,
        prompt_emphasis=True,  # AUTOMATIC1111 reads every prompt's (word:1.2) ("Emphasis: Original", its default)
        clip_skip=clip_skip(request, body),
    )


async def _run(request: Request, body: _Processing, spec: J.JobSpec, finish=None) -> dict[str, Any]:
    """``finish``: what becomes of each image before it is answered (inpainting's paste and overlay)."""
    job = await wait(submit(request, spec, "a1111", job_id=body.force_task_id or None, names=A1111_NAMES), request)
    return _answer(request, body, spec, job, [finish(im) for im in job.images] if finish else job.images)


def _answer(request: Request, body: _Processing, spec: J.JobSpec, job: J.Job, images: list, info_over: dict | None = None) -> dict[str, Any]:
    """The response for a finished job and the images it answers with (an interrupted job: none, info.interrupted);
    info_over: info's values where they are not the job's (the hires fix's second pass)."""
    interrupted = job.status == J.CANCELLED
    if job.status not in (J.SUCCEEDED, J.CANCELLED):
        raise RequestError("prompt", f"the image was not made: {job.status} ({job.error})", status=failure_status(job))
    params = body.model_dump()
    for name in ("init_images", "mask"):
        if name in params:
            params[name] = None  # AUTOMATIC1111 does not echo input images back
    info = {**_info(request, job, spec, body, interrupted, images), **(info_over or {})}
    return {"images": [encode_png(im) for im in images] if body.send_images else [], "parameters": params, "info": json.dumps(info)}


def _info(request: Request, job: J.Job, spec: J.JobSpec, body: _Processing, interrupted: bool, images: list) -> dict[str, Any]:
    n = len(spec.seeds)
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
        "sd_model_name": request.app.state.model_name,
        "denoising_strength": spec.strength if spec.init_image is not None else None,
        "index_of_first_image": 0,
        "infotexts": [image.info.get("parameters") for image in images],  # what each image's PNG carries (sdopt.infotext)
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        # A1111's name for a 9-channel inpainting UNet (a stand-in pipeline in tests has none)
        "is_using_inpainting_conditioning": bool(getattr(request.app.state.worker.pipeline, "inpainting_unet", False)),
        "task_id": job.id,
        "interrupted": interrupted,
        "clip_skip": spec.clip_skip,  # AUTOMATIC1111's Processed.js() has it
        "sdopt_ignored": ignored_fields(body, spec.scheduler) + _clip_skip_ignored(request, spec),
        "sdopt_scheduler": spec.scheduler,
        "sdopt_batch_size": job.batch_size,
        "sdopt_loras": {Path(f).stem: w for f, w in (spec.loras or {}).items()},
        "sdopt_cache_interval": spec.cache_interval,  # None: the artifact's default
        "sdopt_guidance_end": spec.guidance_end,
    }


@router.post("/sdapi/v1/txt2img", response_model=ImagesResponse)
async def txt2img(request: Request, body: Txt2ImgRequest) -> dict[str, Any]:
    apply_infotext(body)
    if body.enable_hr:
        return await _run_hires(request, body, _spec(request, body))
    return await _run(request, body, _spec(request, body))


async def _run_hires(request: Request, body: Txt2ImgRequest, spec: J.JobSpec) -> dict[str, Any]:
    """The hires fix (serve/hires.py): the first pass, then a second-pass job per image; both checked before either runs."""
    import asyncio

    scheduler = hires_scheduler(body, spec.scheduler)
    size = hires.size_field(body)
    names = {**A1111_NAMES, "steps": "hr_second_pass_steps", "width": size, "height": size, "strength": "denoising_strength"}
    max_pixels = request.app.state.settings.max_pixels
    pipeline = request.app.state.worker.pipeline
    model = getattr(getattr(pipeline, "manifest", None), "model", None)
    [blank] = hires.second_pass(body, spec, scheduler, max_pixels, model=model)  # the first seed's second pass, on a blank start
    check_spec(blank, request.app.state.settings, pipeline, names)
    first = await wait(submit(request, spec, "a1111", job_id=body.force_task_id or None, names=A1111_NAMES), request)
    if first.status != J.SUCCEEDED:
        return _answer(request, body, spec, first, first.images)
    seconds = [submit(request, second, "a1111", names=names, continuing=True) for second in hires.second_pass(body, spec, scheduler, max_pixels, first, model)]
    done = await asyncio.gather(*(wait(job, request) for job in seconds))
    failed = next((job for job in done if job.status != J.SUCCEEDED), None)
    images = [] if failed else [job.images[0] for job in done]
    for image, made_from, job in zip(images, first.images, done):  # AUTOMATIC1111's parameters of a hires image
        image.info["parameters"] = hires.parameters(made_from.info.get("parameters", ""), body, job.spec)
    second = done[0].spec
    return _answer(request, body, spec, failed or first, images, {
        "width": second.width, "height": second.height, "denoising_strength": second.strength,
        "sdopt_hires": {"first_pass": f"{spec.width}x{spec.height}", "upscaler": hires.upscaler(body.hr_upscaler)[0],
                        "second_pass_steps": second.steps, "task_ids": [job.id for job in done]}})


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
    settings = request.app.state.settings
    apply_infotext(body)
    if not body.init_images:
        raise RequestError("init_images", "give one init image (base64 PNG or JPEG) in init_images")
    import dataclasses

    if body.resize_mode not in (None, *MODES):
        raise RequestError("resize_mode", f"resize_mode={body.resize_mode}: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale")
    init = decode_image(body.init_images[0], "init_images", settings.max_image_bytes, settings.max_input_pixels).convert("RGB")
    mask = _mask(request, body, init.size) if body.mask else None
    strength = body.denoising_strength if body.denoising_strength is not None else 0.75
    spec = _spec(request, body, init, mask, strength)
    check_spec(spec, settings, request.app.state.worker.pipeline, A1111_NAMES)  # the size is sound before pictures are made that size
    mode, size = body.resize_mode or 0, (spec.width, spec.height)
    if mask is None:
        return await _run(request, body, dataclasses.replace(spec, init_image=resize(init, mode, *size)))
    fill = body.inpainting_fill if body.inpainting_fill is not None else inpaint_area.FILL
    if fill not in (inpaint_area.FILL, inpaint_area.ORIGINAL, *inpaint_area.LATENT_FILLS):
        raise RequestError("inpainting_fill", f"inpainting_fill={fill}: 0 fill, 1 original, 2 latent noise, 3 latent nothing")
    area = inpaint_area.prepare(init, mask, *size, only_masked=bool(body.inpaint_full_res), padding=max(0, body.inpaint_full_res_padding or 0),
                                resize_mode=mode, fill_mode=fill)
    spec = dataclasses.replace(spec, init_image=area.init, mask_image=area.mask, masked_content=inpaint_area.LATENT_FILLS.get(fill, "original"))
    said = inpaint_area.parameters_of(_blur(body), bool(body.inpaint_full_res), max(0, body.inpaint_full_res_padding or 0), fill)

    def finish(image):
        from sdopt.infotext import KEY, with_pairs

        out = inpaint_area.finish(image, area)
        if isinstance(out.info.get(KEY), str):  # its parameters, with what was done around the loop (AUTOMATIC1111's keys)
            out.info[KEY] = with_pairs(out.info[KEY], said)
        return out

    return await _run(request, body, spec, finish=finish)


@router.get("/sdapi/v1/progress")
def progress(request: Request, skip_current_image: bool = False, id_task: str | None = None) -> dict[str, Any]:
    worker = request.app.state.worker
    if id_task is not None:
        job = worker.jobs.get(id_task)
    else:
        job = worker.current[0] if worker.current else None
    queued = worker.queue_depth
    if job is None:
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": queued, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    image = None
    if not skip_current_image and job.preview_png:
        import base64

        image = base64.b64encode(job.preview_png).decode("ascii")
    state = {
        "skipped": False,
        "interrupted": job.status == J.CANCELLED,
        "job": job.id,
        "job_count": queued + len(worker.current),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "job_no": 0,
        "sampling_step": job.step,
        "sampling_steps": job.steps or job.spec.steps,
        "status": job.status,
    }
    return {"progress": job.progress, "eta_relative": job.eta_seconds() or 0.0, "state": state, "current_image": image, "textinfo": None}


@router.post("/sdapi/v1/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    request.app.state.worker.interrupt()
    return {}


@router.post("/sdapi/v1/skip")
def skip(request: Request) -> dict[str, Any]:
    request.app.state.worker.interrupt()
    return {}


class PngInfoRequest(BaseModel):
    image: str = Field(description="base64 PNG (a data: prefix is accepted)")


@router.post("/sdapi/v1/png-info")
def png_info(request: Request, body: PngInfoRequest) -> dict[str, Any]:
    """An image's generation parameters, as AUTOMATIC1111's PNG Info reads them: ``info`` the text, ``parameters`` its
    keys and values, ``items`` the image's other text chunks."""
    from sdopt.infotext import KEY, parse_parameters

    settings = request.app.state.settings
    image = decode_image(body.image, "image", settings.max_image_bytes, settings.max_input_pixels)
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    text = texts.pop(KEY, "")
    return {"info": text, "items": texts, "parameters": parse_parameters(text) if text else {}}
