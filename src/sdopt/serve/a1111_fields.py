"""What AUTOMATIC1111's request fields become here: its sampler and schedule type as sdopt's scheduler (the hires
pass's too), eta where the sampler reads it, an image's ``infotext`` filling the fields a request leaves out, and
the fields set to something sdopt does not do (``info["sdopt_ignored"]``)."""

from __future__ import annotations

from sdopt.lora import other_network_tags
from sdopt.runtime.emphasis import unread_syntax
from sdopt.runtime.schedulers import A1111_SAMPLERS
from sdopt.serve import hires, inpaint_area
from sdopt.serve.a1111_models import Img2ImgRequest, ProcessingRequest, Txt2ImgRequest
from sdopt.serve.api_a1111_lists import CLIP_SKIP_SETTING, OPTIONS_HELD
from sdopt.serve.errors import RequestError
from sdopt.serve.resize_modes import LATENT_UPSCALE
from sdopt.serve.submission import LEVER_NAMES, MAX_PROMPT_CHARS

A1111_NAMES = {"clip_skip": "override_settings", "guidance_scale": "cfg_scale", "num_images": "batch_size", "scheduler": "sampler_name", "strength": "denoising_strength", "mask_image": "mask",
               "init_image": "init_images", **LEVER_NAMES}

# Fields this server uses (or that change nothing here); any other field set away from
# AUTOMATIC1111's default is reported as ignored.
_USED = {
    "prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "batch_size", "n_iter", "steps",
    "cfg_scale", "width", "height", "send_images", "force_task_id", "do_not_save_samples",
    "do_not_save_grid", "override_settings_restore_afterwards", "disable_extra_networks", "comments", "infotext",
    "init_images", "mask", "denoising_strength", "inpainting_mask_invert", "mask_blur", "mask_blur_x", "mask_blur_y",
    "include_init_images", "resize_mode", "mask_round", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_fill",
    "sdopt_cache_interval", "sdopt_guidance_end",
    # the hires fix (serve/hires.py); hr_upscaler is said below
    "enable_hr", "hr_scale", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_prompt",
    "hr_negative_prompt", "hr_upscaler",
}
# save_images is not here: AUTOMATIC1111 writes the images into its outputs folder on the server, which sdopt never does
# (--image-dir keeps OpenAI's url images only), so true is listed as ignored; false, its default, is what sdopt does.
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


def _combined_unapplied(sampler: str) -> bool:
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import unapplied_schedule

    try:
        return unapplied_schedule(sampler) is not None
    except SdoptError:  # an unknown sampler: refused on its own
        return False


def ignored_fields(body: ProcessingRequest, scheduler: str | None) -> list[str]:
    defaults = type(body).model_fields
    # img2img has no hires fix, nor hr_* fields: an enable_hr sent to it does nothing (read as txt2img's, it led to hr_upscaler: a 500)
    hires_on = isinstance(body, Txt2ImgRequest) and bool(body.enable_hr)
    out = []
    for name in sorted(body.model_fields_set | set(body.model_extra or {})):
        if name == "enable_hr" and not isinstance(body, Txt2ImgRequest):
            if getattr(body, name, None):
                out.append(name)
            continue
        if name == "override_settings_restore_afterwards":
            # false: AUTOMATIC1111 keeps the request's Clip skip as its option for the requests after it; here it is
            # this request's only (POST /sdapi/v1/options sets the option), which passed for kept, without a word.
            if body.override_settings_restore_afterwards is False and CLIP_SKIP_SETTING in (body.override_settings or {}):
                out.append(name)
            continue
        if name in _USED or name in _EDIT_MODELS_ONLY:
            continue
        if name == "scheduler":
            if _schedule_unapplied(body.scheduler, scheduler):
                out.append(name)
            continue
        if name == "hr_scheduler":
            if hires_on and _schedule_unapplied(body.hr_scheduler, hires_scheduler(body, scheduler)):
                out.append(name)
            continue
        if name == "override_settings":  # by key: what is applied, or what the server already is (else refused), is not ignored
            out += [f"override_settings.{key}" for key in sorted(body.override_settings or {}) if key not in {CLIP_SKIP_SETTING, *OPTIONS_HELD}]
            continue
        if name == "eta":  # only DDIM and ancestral samplers read it in AUTOMATIC1111 (DDIM and TCD here)
            if body.eta is not None and scheduler in _ETA_FIXED and body.eta != _ETA_FIXED[scheduler]:
                out.append(name)
            continue
        if _hires_only(name) and not hires_on:  # inert in AUTOMATIC1111 too
            continue
        if name == "subseed" and not getattr(body, "subseed_strength", None):  # mixed in at strength 0: inert in AUTOMATIC1111 too
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
    prompts = ["prompt", "negative_prompt"] + (["hr_prompt", "hr_negative_prompt"] if hires_on else [])
    out += [f"{name}: {found}" for name in prompts for found in unread_syntax(getattr(body, name, None) or "")]  # read as [word]
    # taken out of the text, not applied (serve/loras.py): sdopt applies LoRAs only
    out += [f"{name}: {tag}" for name in ("prompt", *(["hr_prompt"] if hires_on else []))
            for tag in other_network_tags(getattr(body, name, None) or "")]
    if isinstance(body, Img2ImgRequest):
        out = sorted(out + _img2img_unapplied(body))
    if hires_on:
        if not hires.upscaler(body.hr_upscaler)[1]:  # a model upscaler (ESRGAN, ...): Lanczos here
            out.append("hr_upscaler")
    if body.infotext:  # what the infotext says that no field here takes (AUTOMATIC1111's Clip skip, hires fix, RNG, ...)
        from sdopt.infotext import one_seed_batch, parse_parameters, unapplied

        # applied by hires.from_parameters, inpaint_area.from_parameters
        taken = {*hires.INFOTEXT_FIELDS, hires.RESIZE} if isinstance(body, Txt2ImgRequest) else set(inpaint_area.INFOTEXT_FIELDS)
        parsed = parse_parameters(body.infotext)
        out += [f"infotext: {key}" for key in unapplied(parsed) if key not in taken]
        if one_seed_batch(parsed):  # sdopt generate --num-images drew its batch from one seed; every image here has its own
            out.append("infotext: Batch size")
    return out


def _img2img_unapplied(body: Img2ImgRequest) -> list[str]:
    """img2img fields whose value AUTOMATIC1111 would act on and sdopt does not (listed whether sent or its default)."""
    out = ["resize_mode"] if body.resize_mode == LATENT_UPSCALE else []  # done as "Just resize"
    if body.mask:
        out += ["mask_round"] if body.mask_round is False else []  # the loop binarizes the mask as Diffusers does
    return out


def scheduler_for(body: ProcessingRequest, field: str = "sampler_name") -> str | None:
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


def eta_for(body: ProcessingRequest, scheduler: str | None) -> float | None:
    """The request's eta where the sampler reads it (clients such as webuiapi send eta 1 with every sampler)."""
    from sdopt.runtime.schedulers import scheduler_class, takes_eta

    # Checked whatever the sampler: eta=5 or -1 on Euler, which reads none, answered 200 without a word (not even in
    # sdopt_ignored). AUTOMATIC1111's eta settings (DDIM's, the ancestral samplers') are sliders from 0 to 1.
    if body.eta is not None and not 0 <= body.eta <= 1:
        raise RequestError("eta", f"eta={body.eta:g}: give a number from 0 to 1, the fresh noise DDIM and ancestral samplers add at each "
                                  "step (0: none), or null")
    return body.eta if scheduler is None or takes_eta(scheduler_class(scheduler)) else None


def apply_infotext(body: ProcessingRequest) -> None:
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
    fields.pop("num_images", None)  # a batch drawn from one seed: this API draws each image from its own (sdopt_ignored says so)
    if "clip_skip" in fields:  # AUTOMATIC1111 maps "Clip skip" to this setting; the request's own override wins
        body.override_settings = {CLIP_SKIP_SETTING: fields.pop("clip_skip"), **(body.override_settings or {})}
    if "scheduler" in fields and "sampler_name" not in given:
        # The sampler as AUTOMATIC1111 names it, with its schedule type: sdopt's own name ("euler_a", "dpmpp_2m_karras"),
        # which sampler_name also takes, was echoed as the answer's info.sampler_name, a name no /samplers listing has
        ours = fields.pop("scheduler")
        body.sampler_name, schedule = A1111_SAMPLERS.get(ours, (ours, None))
        if schedule and (body.scheduler or "automatic").lower() == "automatic":  # the sampler's own schedule is the infotext's
            body.scheduler = schedule
    for name, value in fields.items():
        field = A1111_NAMES.get(name, name)
        if field not in given and field in type(body).model_fields:
            setattr(body, field, value)
    if isinstance(body, Txt2ImgRequest):  # a hires image's parameters: the hires fix again
        hires.from_parameters(body, parsed, given)
    elif isinstance(body, Img2ImgRequest):  # an inpainted image's: its mask blur, area and masked content
        inpaint_area.from_parameters(body, parsed, given)
    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):  # the fields' own cap, which setattr skips
        text = getattr(body, name, None)
        if name not in given and text and len(text) > MAX_PROMPT_CHARS:
            raise RequestError("infotext", f"infotext: its {name} is {len(text):,} characters; this server takes at most {MAX_PROMPT_CHARS:,}")
