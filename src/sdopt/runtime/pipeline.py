"""The one denoising loop every backend runs.

tokenize -> encode (with the negative prompt for classifier-free guidance) ->
initial latents -> scheduler steps -> VAE decode. Components are reached only
through executors (numpy in, numpy out), and the scheduler runs in float32
torch on the CPU, so two backends differ only in what their executors compute.

The loop follows Diffusers' StableDiffusionPipeline step for step (the parity
test holds it to that): same tokenization, same embedding layout
[negative..., positive...], same guidance formula, same post-processing.
img2img and inpainting are options of this loop, not other loops: they change
where it starts and (inpainting) add a blend after each step, as Diffusers'
img2img and inpaint pipelines do (runtime/conditioning.py).
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdopt.errors import SdoptError
from sdopt.manifest import Manifest
from sdopt.request import GenerateRequest, GenerateResult, StageTimings
from sdopt import infotext
from sdopt.runtime import conditioning, embedded_guidance, guidance, request_checks
from sdopt.runtime.executor import Component, close_all
from sdopt.runtime.image_parameters import ImageParameters
from sdopt.runtime.memory import track_peak
from sdopt.runtime.noise import Noise
from sdopt.runtime.one_call import OneCall
from sdopt.runtime.output_checks import broken_images, problem_lines
from sdopt.runtime.prompts import PromptEncoding
from sdopt.runtime.request_defaults import RequestDefaults, default_size, request_defaults, sized as request_defaults_sized
from sdopt.runtime.schedulers import check_steps, make_scheduler, takes_eta
from sdopt.runtime.textual_inversion import TextualInversion
from sdopt.stepcache.schedule import runs_whole

ProgressFn = Callable[[int, int], None]  # (steps done, steps in all)
LatentsFn = Callable[[np.ndarray], None]  # the latents after a step, (batch, C, h, w) float32


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """VAE output in [-1, 1], NCHW float -> uint8 NHWC, rounded as Diffusers rounds (the decoder probe's too)."""
    # NaN pixels (reported in GenerateResult.problems) as black, without numpy's "invalid value encountered in cast".
    pixels = np.nan_to_num(np.clip(decoded / 2 + 0.5, 0.0, 1.0), nan=0.0).transpose(0, 2, 3, 1)
    return (pixels * 255).round().astype(np.uint8)


def to_images(decoded: np.ndarray) -> list:
    """VAE output in [-1, 1], NCHW float -> PIL images, rounded as Diffusers rounds."""
    from PIL import Image

    return [Image.fromarray(img) for img in to_uint8(decoded)]


# The prompt stage, the textual inversion words and how an image was made are ideas of their own, each a class in its
# module (sdopt.runtime.prompts, .textual_inversion, .image_parameters) that Pipeline is made of: this module holds the
# loop and the pipeline's lifecycle (one call at a time: sdopt.runtime.one_call).
class Pipeline(PromptEncoding, TextualInversion, ImageParameters):
    """A loaded artifact, as ``sdopt.load`` returns it (built there, not by callers): ``generate(GenerateRequest(...))``
    makes images; ``request_defaults`` holds the model's own steps and guidance; ``add_embeddings`` (torch) makes
    textual inversion embeddings words; ``unload_loras`` drops the LoRAs requests loaded; ``close()``, or the end of
    ``with sdopt.load(...) as pipe:``, releases it. Calls from several threads run one after another."""

    def __init__(
        self,
        manifest: Manifest,
        components: dict[str, Component],
        tokenizers: list[Any],
        scheduler_config: dict[str, Any],
        device: str = "cpu",
        precision: str = "fp32",
        folder: Path | None = None,
        loras: Any = None,
        token_tables: dict[str, Any] | None = None,
        built_shapes: dict[str, int] | None = None,
    ):
        self.family = manifest.pipeline_family
        missing = set(self.family.components) - set(components)
        if missing:
            raise SdoptError(f"the artifact lacks {', '.join(sorted(missing))}: it cannot generate images")
        self.manifest = manifest
        self.components = components
        self.tokenizers = tokenizers  # one per text encoder, in the family's order
        self.tokenizer = tokenizers[0]
        self.scheduler_config = scheduler_config
        self.device = device
        self.precision = precision
        self.folder = folder
        self.loras = loras  # sdopt.lora.runtime.RuntimeLoras where the backend applies LoRAs per request (torch)
        # The text encoders' torch modules, whose token tables take embeddings at run time (torch); None elsewhere:
        # there only the embeddings fused at export are read (sdopt.embeddings).
        self.token_tables = token_tables
        # The static shapes it was built for, kept where loading lifted them (OpenVINO's reshape): a request that does
        # not say its size runs them, the compiled ones (Pipeline.sized).
        self.built_shapes = built_shapes or dict(manifest.static_shapes or {})
        self.embeddings: list[dict[str, Any]] = list(manifest.export.get("embeddings") or [])  # the manifest's records, then those added
        self._vocabularies: list[Any] | None = None
        # One generate (add_embeddings, unload_loras, close) at a time, none from a running call's callbacks
        # (sdopt.runtime.one_call). The LoRAs are changed under it only (generate, unload_loras).
        self._one_call = OneCall()
        # One tokenizer call at a time: transformers' tokenizers set padding and truncation on their shared backend for
        # each call, so a server checking one request (prompt_chunks, truncated_prompts: unpadded) while its worker
        # encodes another's prompts (padded to 77) gave the worker rows of several lengths, and its jobs failed.
        self._tokenizing = threading.RLock()
        self._adding = threading.Lock()  # one add_embeddings at a time
        self.closed = False

    def __repr__(self) -> str:
        return f"Pipeline({self.manifest.backend}, {self.precision}, device={self.device}, folder={self.folder})"

    # --- stages (the prompts': sdopt.runtime.prompts) ------------------------------
    def encode_images(self, pixels: np.ndarray, timings: StageTimings) -> np.ndarray:
        """The VAE encoder's latent_parameters (mean and log-variance) of images in [-1, 1]."""
        count = len(pixels)
        batch = (self.manifest.static_shapes or {}).get("batch")
        if batch and count != batch:  # a static-shape encoder takes exactly its batch: repeat rows to fill it
            pixels = pixels[np.arange(batch) % count]
        start = time.perf_counter()
        parameters = self.components["vae_encoder"](sample=pixels)["latent_parameters"][:count]
        timings.vae_encoder += time.perf_counter() - start
        return parameters

    @functools.cached_property
    def unet_config(self) -> dict[str, Any]:
        """The UNet's config.json, read once per pipeline (a server checks every request with it); empty when unknown."""
        return conditioning.unet_config(self.manifest, self.folder)

    @functools.cached_property
    def unet_in_channels(self) -> int | None:
        return conditioning.unet_in_channels(self.manifest, self.folder, self.unet_config)

    @property
    def inpainting_unet(self) -> bool:
        """A 9-channel inpainting UNet (latents, mask, masked image): it takes inpainting requests only."""
        return self.unet_in_channels == conditioning.inpainting_channels(self.manifest.model)

    @property
    def request_defaults(self) -> RequestDefaults:
        """The steps and guidance scale to run where the caller does not say (sdopt.runtime.request_defaults):
        ``GenerateRequest(prompt, steps=pipe.request_defaults.steps, ...)``."""
        return request_defaults(self.manifest.model, self.manifest.export)

    @property
    def default_cache_interval(self) -> int:
        """The step-feature caching interval an artifact exported with --deep-cache runs by default (1: none)."""
        return int((self.manifest.export.get("deep_cache") or {}).get("interval", 1)) if "unet_shallow" in self.components else 1

    def cache_interval(self, request: GenerateRequest) -> int:
        return request.cache_interval or self.default_cache_interval

    @property
    def default_guidance_end(self) -> float:
        """The fraction of steps an artifact guides by default (sdopt.runtime.guidance; 1.0: all)."""
        return float((self.manifest.export or {}).get("guidance_end", guidance.OFF))

    def guidance_end(self, request: GenerateRequest) -> float:
        return request.guidance_end if request.guidance_end is not None else self.default_guidance_end

    def unet_calls(self, request: GenerateRequest) -> int:
        """The UNet calls (progress steps) ``request`` makes: PNDM's one more than its steps, Heun's about twice, img2img's
        the strength's share — the total the progress callback reports, known before the call (for a progress bar)."""
        scheduler = make_scheduler(request.scheduler, self.scheduler_config)
        check_steps(scheduler, request)
        scheduler.set_timesteps(request.steps, device="cpu")
        if not request.image_to_image:
            return len(scheduler.timesteps)
        return len(conditioning.strength_timesteps(scheduler, request.steps, request.strength))

    @property
    def clip_skip_layers(self) -> int:
        """The most AUTOMATIC1111's Clip skip can be on this artifact: the K of its text encoder's clip_skip.K
        outputs (sdopt.runtime.torch._text_encoder), its layer count; 1 where it gives none (no Clip skip)."""
        names = getattr(self.components.get(self.family.text_encoders[0]), "output_names", None) or ()
        return max([1] + [int(n.split(".")[1]) for n in names if n.startswith("clip_skip.") and n.split(".")[1].isdigit()])

    def check_request(self, request: GenerateRequest) -> None:
        """Refuse, before any work, a request this artifact cannot run (sdopt.runtime.request_checks)."""
        request_checks.check(self, request)

    def notices(self, request: GenerateRequest) -> list[str]:
        """What generate would warn of for ``request`` (prompts cut, an init image resized, a field it does not use):
        a server says them to the client whose request it is, apart from the others' it ran in the same call."""
        as_run, scheduler, embeds_guidance = self._as_run(request)
        return request_checks.notices(self, request, as_run, scheduler, embeds_guidance)

    def _as_run(self, asked: GenerateRequest) -> tuple[GenerateRequest, Any, bool]:
        """The request as the loop runs it (guidance taken out for a UNet that embeds it: an LCM-distilled UNet takes
        guidance as its input, one pass per step), its scheduler, and whether the UNet embeds guidance."""
        embeds_guidance = embedded_guidance.embeds_guidance(self.manifest.model)
        request = embedded_guidance.unguided(asked) if embeds_guidance else asked
        return request, make_scheduler(request.scheduler, self.scheduler_config), embeds_guidance

    # --- the loop -----------------------------------------------------------------
    def generate(self, request: GenerateRequest, progress: ProgressFn | None = None, on_latents: LatentsFn | None = None) -> GenerateResult:
        """Run the loop. progress(steps done, steps in all) after every UNet call; it may raise to stop the
        call. on_latents(latents) before it, with the batch's latents as a float32 array (servers make
        previews of them); a copy is made only when on_latents is given. Calls from several threads run one
        after another (a pipeline's modules hold one request's LoRAs at a time): load a pipeline per thread to
        run them side by side."""
        if not isinstance(request, GenerateRequest):
            raise SdoptError(f"generate takes a sdopt.GenerateRequest, not {type(request).__name__}: sdopt.GenerateRequest(prompt=...)")
        for name, hook in (("progress", progress), ("on_latents", on_latents)):
            if hook is not None and not callable(hook):
                raise SdoptError(f"{name} must be a function (or None), not {type(hook).__name__}")
        request = self.sized(request)
        with self._one_call("generate"):
            self._refuse_closed()
            with self._one_call.running():
                return self._generate(request, progress, on_latents)

    def _refuse_closed(self) -> None:
        if self.closed:
            raise SdoptError("this pipeline is closed (Pipeline.close(), or its with-block ended): load the artifact again")

    def sized(self, request: GenerateRequest) -> GenerateRequest:
        """The request with the height and width it left to the pipeline (None) filled in (request_defaults.sized)."""
        return request_defaults_sized(request, self.manifest, self.built_shapes)

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) of a request that does not say, nor gives an init image: its built shapes, else the model's."""
        return default_size(self.manifest, self.built_shapes)

    def _generate(self, request: GenerateRequest, progress: ProgressFn | None, on_latents: LatentsFn | None) -> GenerateResult:
        import torch

        self.check_request(request)
        asked = request
        model = self.manifest.model
        request, scheduler, embeds_guidance = self._as_run(asked)
        notices = request_checks.notices(self, asked, request, scheduler, embeds_guidance)
        for notice in notices:
            warnings.warn(notice, UserWarning, stacklevel=3)
        scheduler.set_timesteps(request.steps, device="cpu")
        timings = StageTimings()
        unet, cfg = self.components["unet"], request.uses_guidance
        interval = self.cache_interval(request)
        shallow = self.components.get("unet_shallow") if interval > 1 else None
        images = request.batch_size
        feature = None  # the UNet's deep feature from the last whole step (step-feature caching)

        if self.loras is not None and (request.loras or self.loras.active):
            from sdopt.lora import parse_loras

            self.loras.activate(parse_loras(request.loras))  # none asked: the base weights again

        with track_peak(cuda=self.device.startswith("cuda")) as memory:
            begin = start = time.perf_counter()
            text = self.encode_prompts(request)  # the UNet's conditioning inputs
            if embeds_guidance:
                text["timestep_cond"] = embedded_guidance.scale_embedding(asked.guidance_scale, int(model[embedded_guidance.FACT]), images)
            timings.text_encoder = time.perf_counter() - start

            # Noise, or the init image's latents noised to where strength starts the schedule.
            rng = Noise(request.seed, request.seeds)  # one generator, or one per image (request.seeds)
            start_at = conditioning.start(request, scheduler, rng, model, lambda pixels: self.encode_images(pixels, timings),
                                          inpainting_unet=self.inpainting_unet)
            latents, timesteps = start_at.latents, start_at.timesteps
            step_kwargs = _step_kwargs(scheduler, rng.for_scheduler, request.eta)
            guided = guidance.guided_steps(len(timesteps), self.guidance_end(request)) if cfg else 0

            for i, t in enumerate(timesteps):
                if cfg and i == guided:  # truncated guidance ends here: the conditional rows alone from now on
                    cfg, text = False, guidance.conditional_half(text, images)
                    feature = None if feature is None else feature[images:]
                if not cfg and guided:
                    timings.unguided_steps += 1
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if start_at.unet_extra is not None:  # an inpainting UNet: the mask and the masked image's latents too
                    model_input = torch.cat([model_input, torch.cat([start_at.unet_extra] * 2) if cfg else start_at.unet_extra], dim=1)
                timestep = np.array(t.item(), dtype=np.float32)  # one for the whole batch, as a float scalar
                inputs = {"sample": model_input.numpy(), "timestep": timestep, **text}
                step_start = time.perf_counter()
                if shallow is not None and feature is not None and not runs_whole(i, interval):
                    noise = shallow(**inputs, deep_feature=feature)["out_sample"]
                    timings.shallow_steps += 1
                else:
                    out = unet(**inputs)
                    noise, feature = out["out_sample"], out.get("deep_feature")
                timings.unet_steps.append(time.perf_counter() - step_start)
                noise = torch.from_numpy(noise)
                if cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + request.guidance_scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                if start_at.after_step:  # inpainting: outside the mask, back to the image at this noise level
                    latents = start_at.after_step(latents, i)
                if on_latents:
                    on_latents(latents.numpy().copy())
                if progress:
                    progress(i + 1, len(timesteps))

            final = latents.numpy().astype(np.float32)
            start = time.perf_counter()
            decoded = self.components["vae_decoder"](latent_sample=final / model["vae_scaling_factor"])["sample"]
            timings.vae_decoder = time.perf_counter() - start
            images = to_images(decoded)
            timings.total = time.perf_counter() - begin
        for index, image in enumerate(images):  # how each was made, written into its PNG (sdopt.infotext)
            image.info[infotext.KEY] = self.parameters(asked, index)

        broken = broken_images(images, final, decoded)
        return GenerateResult(images=images, latents=final, timings=timings, memory=dict(memory), request=asked,
                              problems=problem_lines(broken), broken_images=broken, warnings=notices)

    def run_settings(self) -> dict[str, Any]:
        """What each component runs with, as its backend reports it (OpenVINO's compiled-model properties,
        ONNX Runtime's session options, torch's threads); the bench records it per row."""
        return {name: dict(c.settings) for name, c in self.components.items() if getattr(c, "settings", None)}

    def unload_loras(self) -> None:
        """Remove every LoRA a request loaded: the modules are as loaded again (not under a running call)."""
        if self.loras is not None:
            with self._one_call("unload_loras"):
                self.loras.unload()

    def close(self) -> None:
        """Release the components (sessions, compiled models, weights); a later generate is refused."""
        with self._one_call("close"):  # not under a running call
            self.closed = True
            close_all(self.components)
            # The LoRA runtime and the token tables hold the torch modules too: while the Pipeline lived, close() released none.
            self.loras = self.token_tables = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _step_kwargs(scheduler, generator, eta: float | None) -> dict[str, Any]:
    """eta and generator, passed only to schedulers whose step() takes them (as Diffusers does)."""
    import inspect

    kwargs: dict[str, Any] = {}
    if takes_eta(scheduler):
        kwargs["eta"] = 0.0 if eta is None else float(eta)  # Diffusers' pipelines' default, TCD's included
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator
    return kwargs
