"""What the loop checks of a request against an artifact before it runs, and what it says of a request's values it
will not use (each a warning the result carries). Pipeline.check_request and Pipeline.generate call these; the
values alone are GenerateRequest.validate's."""

from __future__ import annotations

from typing import Any

from sdopt.errors import SdoptError, argument, in_api_request, on_command_line
from sdopt.request import GenerateRequest
from sdopt.rewrite import recorded as recorded_rewrites
from sdopt.runtime import attention_memory, conditioning, embedded_guidance, emphasis
from sdopt.runtime.schedulers import check_scheduler, check_steps, make_scheduler, takes_eta
from sdopt.tensorrt.profiles import describe_ranges, image_ranges, recorded_profile


def _check_clip_skip(pipe: Any, request: GenerateRequest) -> None:
    if request.clip_skip == 1 or not pipe.family.reads_clip_skip:  # SDXL: ignored with a warning (_clip_skip_notices)
        return
    most = pipe.clip_skip_layers
    if most == 1:
        raise SdoptError(f"{argument('clip_skip', request.clip_skip)}: this {pipe.manifest.backend} artifact's text encoder gives only its last layer "
                         "(it was exported before sdopt read Clip skip, or by another tool): export it again with `sdopt export`, "
                         "or generate with the Diffusers checkpoint", field="clip_skip")
    if request.clip_skip > most:
        raise SdoptError(f"{argument('clip_skip', request.clip_skip)}: this model's text encoder has {most} layers, so Clip skip goes from 1 to {most}",
                         field="clip_skip")


def _clip_skip_notices(pipe: Any, request: GenerateRequest) -> list[str]:
    if request.clip_skip == 1 or pipe.family.reads_clip_skip:
        return []
    return [f"{argument('clip_skip', request.clip_skip)} is ignored: {pipe.family.title} conditions on fixed layers of its text encoders "
            "(AUTOMATIC1111 ignores Clip skip there too)"]


def _refuse_cache_interval(pipe: Any, request: GenerateRequest) -> None:
    """A cache_interval the pipeline has no shallow UNet branch for, with the direct fix first: a backend that splits the
    UNet at load (torch's deep_cache option) needs only that; the others an export with it."""
    from sdopt.runtime.backends import get_backend

    backend = pipe.manifest.backend
    asked, whole = argument("cache_interval", request.cache_interval), argument("cache_interval", 1)
    if "deep_cache" in get_backend(backend).options:
        # A server's client cannot reload it: its operator can (sdopt serve --deep-cache), which the message names too.
        # To the client alone: deep_cache in its API's form (deep_cache=true) read as a field it could send.
        load = ("its server's operator can start it with sdopt serve --deep-cache (step-feature caching)" if in_api_request() else
                f"load it with {argument('deep_cache', True)} (step-feature caching; a server: sdopt serve --deep-cache)")
        raise SdoptError(f"{asked} needs the UNet's shallow branch, which this {backend} pipeline was loaded without: {load}, "
                         f"or ask for {whole}", field="cache_interval")
    target = (pipe.manifest.export or {}).get("target") or "TARGET"
    # sdopt generate loads a PyTorch checkpoint with the branch for a --cache-interval (it has no --deep-cache)
    torch = ("generate from the PyTorch checkpoint" if on_command_line() else
             "serve the PyTorch checkpoint with sdopt serve --deep-cache" if in_api_request() else
             f"load the PyTorch checkpoint with {argument('deep_cache', True)}")
    raise SdoptError(f"{asked} needs the UNet's shallow branch, which this {backend} artifact lacks: export it with step-feature "
                     f"caching (sdopt export MODEL --to {target} --deep-cache N), {torch}, or ask for {whole}", field="cache_interval")


def _refuse_loras(pipe: Any, request: GenerateRequest) -> None:
    """LoRAs asked of an artifact that takes none per request. One fused into it already is said so: the advice to fuse
    it, followed, was given again to the same command on the fused artifact, a loop."""
    from pathlib import Path

    backend, fused = pipe.manifest.backend, pipe.fused_loras
    already = [f"{name}:{fused[name]:g}" for name in dict.fromkeys(Path(f).name for f in request.loras) if name in fused]
    if already:
        raise SdoptError(
            f"this {backend} artifact cannot apply LoRAs per request (only the torch backend can), and has {', '.join(already)} "
            f"fused into its weights already, in every image it makes: leave out {argument('loras', flag='--lora')} "
            "(for another scale, export it again with `sdopt export ... --lora FILE:SCALE`)", field="loras")
    raise SdoptError(
        f"this {backend} artifact cannot apply LoRAs per request (only the torch backend can): "
        "fuse them into the artifact instead, `sdopt export ... --lora FILE[:SCALE]`, or generate with the Diffusers checkpoint"
    )


def check(pipe: Any, request: GenerateRequest) -> None:
    """Refuse a request ``pipe`` (a Pipeline) cannot run, before any work: its values (GenerateRequest.validate), then
    what this artifact lacks for it (img2img, Clip skip's layers, the UNet's shallow branch, per-request LoRAs, the
    condition inputs), the attention memory it would need, and its static shapes."""
    request = pipe.sized(request)
    request.validate()
    if request.image_to_image:
        pipe.family.refuse("img2img", "img2img and inpainting (init_image)")
    _check_clip_skip(pipe, request)
    if pipe.cache_interval(request) > 1 and "unet_shallow" not in pipe.components:
        _refuse_cache_interval(pipe, request)
    if request.loras and pipe.loras is None:
        _refuse_loras(pipe, request)
    check_scheduler(request.scheduler)
    check_steps(make_scheduler(request.scheduler, pipe.scheduler_config), request)
    conditioning.check_artifact(request, pipe.manifest, pipe.components, pipe.unet_in_channels)
    attention_memory.check(pipe.manifest.backend, pipe.device, pipe.unet_config, pipe.manifest.model,
                           request.batch_size, embedded_guidance.runs_guided(request.guidance_scale, pipe.manifest.model),
                           request.height, request.width, recorded_rewrites(pipe.manifest.export).get("unet", {}))
    check_shapes(pipe.manifest, request)


def check_shapes(manifest: Any, request: GenerateRequest) -> None:
    """Refuse a request (its size filled in: Pipeline.sized) outside the shapes the artifact runs: a static-shape
    artifact's built shapes, TensorRT engines' profiles. The manifest alone decides, so sdopt generate asks before
    the (slow) load too."""
    shapes = manifest.static_shapes
    if shapes:
        want = {"batch": request.batch_size, "height": request.height, "width": request.width}
        if any(shapes.get(k) not in (None, v) for k, v in want.items()):
            batch = shapes.get("batch")
            per_prompt = (f" (it takes {batch} image{'s' if batch != 1 else ''} a call, prompts x num_images: ask for "
                          f"{argument('num_images', batch // len(request.prompts))})"
                          if batch not in (None, request.batch_size) and batch % len(request.prompts) == 0 else "")
            # "export again for these" named no command; a server's client read "load it with reshape=True", which
            # only the server's operator can (as _refuse_cache_interval says it)
            # and a static TensorRT engine has no reshape
            size, images = f"--height {request.height} --width {request.width}", request.batch_size
            if manifest.backend == "tensorrt":
                instead = f"export again for these: sdopt export MODEL --to tensorrt --static {size} --batch-range {images}:{images}"
            else:
                # an HTTP client is told its server's flag: reshape in its API's form (reshape=true) read as a field to send
                reshape = ("serve it with sdopt serve --reshape" if in_api_request() else
                           f"load it with {argument('reshape', True)}" + ("" if on_command_line() else " (a server: sdopt serve --reshape)"))
                instead = (f"{reshape} to compile this one on first use, or export again for these: "
                           f"sdopt export MODEL --to openvino {size} --batch {images}")
            raise SdoptError(f"this artifact was built for static shapes {shapes}; the request asks for {want}{per_prompt}. "
                             f"Ask for the built shapes, {instead}")
        _check_unguided_on_guided_engines(manifest, request)
    elif ranges := image_ranges(manifest.export, manifest.model):  # TensorRT engines run inside their profiles only
        want = {"batch": request.batch_size, "height": request.height, "width": request.width}
        if any(not ranges[k][0] <= v <= ranges[k][2] for k, v in want.items()):
            (b0, _, b2), (_, h1, _), (_, w1, _) = ranges["batch"], ranges["height"], ranges["width"]
            raise SdoptError(
                f"this artifact's TensorRT engines take {describe_ranges(ranges)}; the request asks for {want}. Ask for a "
                f"size and batch inside them, or build engines that take it: sdopt export MODEL --to tensorrt --shapes "
                f"{h1}x{w1},{request.height}x{request.width} --batch-range {min(b0, request.batch_size)}:{max(b2, request.batch_size)}"
            )


def _check_unguided_on_guided_engines(manifest: Any, request: GenerateRequest) -> None:
    """Static TensorRT engines take one UNet batch, prompts and negatives together (tensorrt.profiles: static is
    guided); a request without guidance (guidance_scale <= 1) runs one half, a shape the engine has no profile for,
    and failed inside TensorRT after the text encoder had run."""
    sample = recorded_profile(manifest.export, "unet", "sample")
    if manifest.backend != "tensorrt" or not sample or embedded_guidance.runs_guided(request.guidance_scale, manifest.model):
        return
    if request.batch_size < int(sample["min"][0]):
        raise SdoptError(
            f"{argument('guidance_scale', request.guidance_scale)} runs the UNet without guidance, but this artifact's static TensorRT "
            f"engines take prompts and their negatives together ({int(sample['min'][0])} a call): ask for guidance above 1, or "
            f"build dynamic engines, which take both: sdopt export MODEL --to tensorrt --height {request.height} --width "
            f"{request.width} --batch-range 1:{request.batch_size}", field="guidance_scale")


def notices(pipe: Any, asked: GenerateRequest, request: GenerateRequest, scheduler: Any, embeds_guidance: bool) -> list[str]:
    """What ``pipe`` will not do of what the request asks (``asked``; ``request``: as the loop runs it, guidance taken
    out for a UNet that embeds it): truncated prompts, resized init images, unused eta, guidance_end, Clip skip and
    negative prompts, AUTOMATIC1111's prompt editing."""
    return (pipe.truncated_prompts(request) + _unread_syntax_notices(request) + _network_tag_notices(request) + conditioning.resize_notices(request, pipe.manifest.static_shapes) + conditioning.masked_content_notices(request)
            + embedded_guidance.notices(asked, pipe.manifest.model)
            + _eta_notices(request, scheduler) + _guidance_end_notices(request) + _clip_skip_notices(pipe, request)
            + _negative_prompt_notices(request, embeds_guidance))


def _network_tag_notices(request: GenerateRequest) -> list[str]:
    """AUTOMATIC1111's <lora:NAME:W> (and other extra-network) tags in a prompt given from Python: sdopt generate and
    sdopt serve take them out before the pipeline sees them; a Python caller's went to the text encoder as words, in
    silence (qa71)."""
    from sdopt.lora import take_network_tags  # the one reader of tags, generate's and serve's

    found = [take_network_tags(text) for text in [*request.prompts, *(n for n in request.negative_prompts if n)]]
    tags = [*dict.fromkeys(tag for _, loras, others in found for tag in [m.group(0) for m in loras] + others)]
    if not tags:
        return []
    return [f"{', '.join(tags)} in the prompt are read by the text encoder as words: AUTOMATIC1111's extra-network tags are "
            "taken out by sdopt generate and sdopt serve only; give a LoRA as loras={FILE: SCALE}"]


def _unread_syntax_notices(request: GenerateRequest) -> list[str]:
    """AUTOMATIC1111's prompt editing and alternation, which emphasis reads as [word]: said, not done silently."""
    if not request.prompt_emphasis:  # plain text: every bracket is read as written, as in Diffusers
        return []
    kinds = {**{n: "negative prompt" for n in request.negative_prompts if n}, **{p: "prompt" for p in request.prompts}}
    return [f"{kind} {text[:40]!r}: AUTOMATIC1111's {found} is not done here; the text in its brackets is read as "
            "[word] (weight ÷1.1) at every step" for text, kind in kinds.items() for found in emphasis.unread_syntax(text)]


def _negative_prompt_notices(request: GenerateRequest, embeds_guidance: bool) -> list[str]:
    """A negative prompt a request without classifier-free guidance never reads (guidance 1 or less: a Turbo model's
    0), said as the LCM case is (embedded_guidance.notices)."""
    if embeds_guidance or request.uses_guidance or not any(request.negative_prompts):
        return []
    return [f"{argument('guidance_scale', request.guidance_scale, '--guidance')} runs no unconditional pass, so the negative prompt is not used "
            "(it is read only with guidance above 1)"]


def _guidance_end_notices(request: GenerateRequest) -> list[str]:
    """A truncation asked of a request that runs no guidance (guidance scale 1 or less, or a UNet that embeds it)."""
    if request.guidance_end is not None and request.guidance_end < 1 and not request.uses_guidance:
        return [f"{argument('guidance_end', request.guidance_end)} is not used: this request runs no classifier-free guidance to truncate "
                "(guidance scale 1 or less, or a UNet that embeds guidance)"]
    return []


def _eta_notices(request: GenerateRequest, scheduler) -> list[str]:
    if request.eta and not takes_eta(scheduler):
        return [f"{argument('eta', request.eta)} is not used: only DDIM and TCD add noise by eta, and this request runs {type(scheduler).__name__}: ask for ddim or tcd ({argument('scheduler')})"]
    return []
