"""The one job type every API maps onto, and what a job tells its followers.

A ``JobSpec`` is what was asked (one prompt, n images); a ``Job`` is its life:
status, step progress, events, images. Images of a job are rows of a batch,
each with its own seed (seed, seed+1, ... as AUTOMATIC1111 numbers a batch),
so a job's images are the same whether it ran alone or batched with others.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sdopt.request import DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH
from sdopt.serve.request_ids import current as current_request_id

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "queued", "running", "succeeded", "failed", "cancelled", "timed_out"
FINISHED = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)


@dataclass
class JobSpec:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    n: int = 1
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    # Every API sets the size. GenerateRequest's default, None (the pipeline's choice), cannot be checked against
    # --max-pixels before queueing, so a JobSpec built by hand (tests) gets SD 1.5's side.
    width: int = 512
    height: int = 512
    scheduler: str | None = None
    eta: float | None = None  # ddim and tcd: the fresh noise each step adds; None: 0
    init_image: Any = None  # PIL image: img2img / inpainting
    init_latents: Any = None  # float32 (1, C, h, w): img2img from latents (the hires fix's Latent upscalers, serve/hires.py)
    mask_image: Any = None  # PIL image, white = repaint
    strength: float = DEFAULT_STRENGTH  # GenerateRequest's; a job without an init image passes none (generate_request)
    masked_content: str = "original"  # inpainting: GenerateRequest.masked_content (AUTOMATIC1111's inpainting_fill 2, 3)
    cache_interval: int | None = None  # step-feature caching; None: the artifact's default
    guidance_end: float | None = None  # truncated guidance; None: the artifact's default
    loras: dict[str, float] | None = None  # LoRA file -> weight, from the prompt's <lora:NAME:W> tags (serve/loras.py)
    prompt_emphasis: bool = False  # AUTOMATIC1111's (word:1.2) (sdopt.runtime.emphasis): its API's jobs have it
    clip_skip: int = 1  # AUTOMATIC1111's Clip skip (GenerateRequest.clip_skip)
    text_chunks: int = 1  # with emphasis, the 75-token chunks its prompt or negative needs (set at submission)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one generate call (each keeps its own prompt, seeds and init image)."""
        # A job without a negative prompt never shares a call with one that has it: an SDXL call with any negative
        # prompt encodes "" for the others, alone they get zeros.
        key = (self.width, self.height, self.steps, self.scheduler, self.eta, float(self.guidance_scale), self.cache_interval, self.guidance_end,
               tuple(sorted((self.loras or {}).items())), bool(self.negative_prompt), self.prompt_emphasis, self.text_chunks,
               self.clip_skip)
        if self.init_latents is not None:
            return ("latents", *key, float(self.strength))
        if self.init_image is None:
            return ("text", *key)
        # img2img and inpainting share a call only with their own kind, at the same strength.
        return ("image", *key, float(self.strength), self.mask_image is not None, self.masked_content)

    def describe(self) -> dict[str, Any]:
        """The parameters as JSON (images as their sizes, not their pixels)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("init_image", "mask_image", "init_latents")}
        out["seeds"] = self.seeds
        out["init_latents"] = None if self.init_latents is None else list(self.init_latents.shape)
        for name in ("init_image", "mask_image"):
            image = getattr(self, name)
            out[name] = None if image is None else f"{image.width}x{image.height}"
        return out


def generate_request(specs: list[JobSpec]):
    """The one generate call for jobs that share a batch key: a row per image, each with its job's
    prompt, seed and (img2img/inpainting) picture; a call of one job passes its one picture as it is."""
    from sdopt.request import GenerateRequest

    first = specs[0]
    prompts = [spec.prompt for spec in specs for _ in range(spec.n)]
    negatives = [spec.negative_prompt for spec in specs for _ in range(spec.n)]
    seeds = [seed for spec in specs for seed in spec.seeds]

    def per_row(name: str) -> Any:
        if getattr(first, name) is None or len(specs) == 1:
            return getattr(first, name)
        return [getattr(spec, name) for spec in specs for _ in range(spec.n)]

    return GenerateRequest(
        # No job gave one: none at all (SDXL base then conditions on zeros; AUTOMATIC1111 does so for empty negatives).
        prompt=prompts, negative_prompt=negatives if any(negatives) else None, seed=first.seed, seeds=seeds, steps=first.steps,
        guidance_scale=first.guidance_scale, height=first.height, width=first.width, scheduler=first.scheduler, eta=first.eta,
        init_image=per_row("init_image"), mask_image=per_row("mask_image"), init_latents=_latent_rows(specs), masked_content=first.masked_content,
        cache_interval=first.cache_interval, guidance_end=first.guidance_end, loras=first.loras, prompt_emphasis=first.prompt_emphasis,
        clip_skip=first.clip_skip,
        # text-to-image takes no strength (GenerateRequest refuses one given without an image to repaint)
        **({"strength": first.strength} if first.init_image is not None or first.init_latents is not None else {}),
    )


def _latent_rows(specs: list[JobSpec]) -> Any:
    """The jobs' init latents, a row per image (None where they start from none: a batch key keeps them apart)."""
    if specs[0].init_latents is None:
        return None
    import numpy as np

    return np.concatenate([spec.init_latents for spec in specs for _ in range(spec.n)])


@dataclass
class Job:
    spec: JobSpec
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    api: str = "native"  # which API submitted it: native, a1111, openai
    # How that API names the loop's fields (errors.api_fields, as its check said them: cfg_scale for guidance_scale), for
    # what the worker thread tells it; None: no API's (a Python caller's job)
    fields: dict[str, str] | None = None
    request_id: str | None = field(default_factory=current_request_id)  # the HTTP request's (X-Request-ID), for the log
    status: str = QUEUED
    error: str | None = None
    internal_error: bool = False  # failed by a fault of the server (a bug, a crash), not of the request
    step: int = 0
    steps: int = 0
    images: list = field(default_factory=list)  # PIL images once succeeded
    images_dropped: bool = False  # the worker let go of them: IMAGES_KEPT newer jobs have finished since
    latents: Any = None  # float32 (n, C, h, w): the final latents of its images, kept with them (the hires fix's Latent upscalers)
    preview_png: bytes | None = None  # a low-resolution look at the latents, refreshed while running
    created: float = field(default_factory=time.time)
    started: float | None = None
    stepped: float | None = None  # time.time() at its last step: the ETA counts down from there
    finished: float | None = None
    deadline: float = float("inf")  # time.monotonic() after which the job times out
    batch_size: int = 0  # images in the generate call that ran it
    skipped: bool = False  # cancelled by AUTOMATIC1111's skip: its request goes on with its next iteration (api_a1111.py)
    continued_by: str | None = None  # the job of its request's next iteration (AUTOMATIC1111's n_iter), once queued
    iterations: int = 1  # how many iterations its request has (AUTOMATIC1111's n_iter)
    events: list[dict[str, Any]] = field(default_factory=list)
    # What the pipeline warned of for this job's own request (its prompt cut at the encoder's tokens, its init image
    # resized, a field it did not use): said to its client, never another job's of the same call
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, Any] | None = None  # spec.describe(), kept once the worker let go of the spec's input pixels
    future: Future = field(default_factory=Future)  # resolved with the job itself when it finishes
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ended(self) -> bool:
        """In a final status: succeeded, failed, cancelled or timed out."""
        return self.status in FINISHED

    def emit(self, kind: str, **data: Any) -> None:
        with self._lock:
            self.events.append({"event": kind, "id": self.id, "time": time.time(), **data})

    def events_since(self, index: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.events[index:]

    def start(self, batch_size: int, steps: int) -> None:
        """Running, unless it ended meanwhile: a cancel (interrupt, DELETE, shutdown) between the worker taking its call
        and starting it stays a cancel, and the call's progress hook drops it as any job cancelled out of a call."""
        with self._lock:
            if self.status in FINISHED:
                return
            self.status, self.started, self.batch_size, self.steps = RUNNING, time.time(), batch_size, steps
        self.emit("started", batch_size=batch_size, steps=steps)

    def finish(self, status: str, error: str | None = None, images: list | None = None, skipped: bool = False) -> bool:
        """Move to a final status once; False when it already had one (a cancel racing the end).
        skipped: a cancel by AUTOMATIC1111's skip, set with the status so that whoever sees the one sees the other."""
        with self._lock:
            if self.status in FINISHED:
                return False
            self.status, self.error, self.finished, self.skipped = status, error, time.time(), skipped
            if images is not None:
                self.images = images
        self.emit("done", status=status, error=error, images=len(self.images))
        if not self.future.done():
            self.future.set_result(self)
        return True

    def describe(self) -> dict[str, Any]:
        """What was asked, as JSON (JobSpec.describe), also once the inputs are let go of."""
        return self.parameters if self.parameters is not None else self.spec.describe()

    def drop_inputs(self) -> None:
        """Let go of the init image, mask and init latents, which a finished job needs no more: each may be 16
        megapixels (--max-pixels x 16), and the worker keeps FINISHED_KEPT finished jobs. Their sizes stay in describe().
        The spec is replaced, not changed: a route may still read the one it submitted."""
        import dataclasses

        if self.spec.init_image is None and self.spec.mask_image is None and self.spec.init_latents is None:
            return
        self.parameters = self.spec.describe()
        self.spec = dataclasses.replace(self.spec, init_image=None, mask_image=None, init_latents=None)

    @property
    def progress(self) -> float:
        if self.status == SUCCEEDED:
            return 1.0
        return self.step / self.steps if self.steps else 0.0

    def advance(self, step: int, steps: int) -> None:
        """``step`` of ``steps`` done, now."""
        self.step, self.steps, self.stepped = step, steps, time.time()

    def eta_seconds(self) -> float | None:
        """Remaining seconds at the pace of the steps done, less the time since the last one; None before the first step.
        Paced by the time up to now instead, the estimate grew while each step ran: sd15's two 10 s steps on a CPU read
        12, 14, ... 20 s left at step 1 of 2."""
        if self.status != RUNNING or not self.started or not self.step:
            return None
        last = self.stepped or time.time()
        pace = (last - self.started) / self.step
        return max(0.0, pace * (self.steps - self.step) - (time.time() - last))

    def seconds(self) -> float | None:
        return (self.finished - self.created) if self.finished else None
