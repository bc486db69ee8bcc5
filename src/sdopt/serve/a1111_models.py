"""AUTOMATIC1111's request and response models (``/sdapi/v1``): the fields it builds from its processing classes
(modules/api/models.py over modules/processing.py), with the same defaults. Unknown fields (extensions' own) are
accepted, as there; what becomes of each field is a1111_fields.py's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdopt.serve.submission import MAX_PROMPT_CHARS, cache_interval_field, guidance_end_field

# An image's generation parameters (``infotext``) as this server takes them: a real one is a few hundred characters
# (a few kB with extensions' keys); 64,000 holds its four prompts at their 10,000 cap and far more keys than any
# carries. It is parsed on the request's way in (~1.4 s per 10 MB): uncapped, a 32 MiB body held the server for seconds.
MAX_INFOTEXT_CHARS = 64_000

# AUTOMATIC1111's width and height where a request does not say, or sends null (api_a1111's first pass, hires' second).
A1111_SIDE = 512


class ProcessingRequest(BaseModel):
    """StableDiffusionProcessing's API fields, with AUTOMATIC1111's defaults."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
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
    width: int | None = A1111_SIDE
    height: int | None = A1111_SIDE
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
    infotext: str | None = Field(None, max_length=MAX_INFOTEXT_CHARS)
    # sdopt's own: AUTOMATIC1111 has no such fields (and, like it, ignores what it does not know).
    sdopt_cache_interval: int | None = cache_interval_field()
    sdopt_guidance_end: float | None = guidance_end_field()


class Txt2ImgRequest(ProcessingRequest):
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
    hr_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)


class Img2ImgRequest(ProcessingRequest):
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



class PngInfoRequest(BaseModel):
    image: str = Field(description="base64 PNG (a data: prefix is accepted)")
