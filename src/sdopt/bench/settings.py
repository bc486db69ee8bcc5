"""What one bench run asks of every artifact: prompts, seeds, size, steps, warm-ups, runs, rounds, and
an init image (and mask) when it benches img2img or inpainting — from the command line over a hardware
profile's [bench] over the defaults."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from sdopt.bench.forkserver import WORKER_STARTS, effective_worker_start
from sdopt.bench.grounding import choose_judge
from sdopt.bench.profiles import BENCH_DEFAULTS, HardwareProfile
from sdopt.errors import SdoptError, command_line
from sdopt.request import GenerateRequest, image_options
from sdopt.runtime.backends import BACKENDS, device_kind
from sdopt.runtime.schedulers import check_scheduler


@dataclass(frozen=True)
class ModelDefaults:
    """What a few-step reference runs at where a request does not say (bench.artifacts.model_defaults): the settings
    (steps, guidance_scale, scheduler; none for an ordinary checkpoint), where they come from, its scheduler's class;
    and any reference's own size (height, width: what it was trained at, or a static artifact's built size)."""
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    scheduler_class: str = ""
    size: tuple[int, int] | None = None


@dataclass
class BenchSettings:
    prompts: list[str]
    seeds: list[int]
    steps: int
    height: int
    width: int
    guidance_scale: float
    scheduler: str | None
    warmup: int
    runs: int
    device: str = "cpu"
    # An artifact's time budget: no further warm-up or measured run starts once it is spent (one
    # full run always happens; worker.measure): a precision the hardware only emulates (bf16 on
    # AVX2) would otherwise hold the matrix for hours.
    max_seconds: float | None = None
    judge: str = "auto"  # prompt adherence (sdopt.bench.grounding): auto, none, classical, openai, transformers
    run: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend -> run settings (a profile's [run] tables)
    # Passes over every artifact, the order rotating, each a fresh worker with its warm-up and ``runs``
    # measured runs: an artifact's samples then spread over the whole bench instead of one stretch of
    # it, so a shared machine's slow minutes land on every artifact alike (sdopt.bench.rounds).
    rounds: int = 1
    # "fork": a worker is forked from a process that has imported its backend's libraries once
    # (bench/forkserver.py; Linux, CPU or CUDA), so its load time is the artifact's own; "cold": a
    # fresh interpreter per worker, whose load time includes importing torch and Diffusers (~6 s).
    worker_start: str = "fork"
    # Image-conditioned requests (file paths): every prompt and seed runs img2img on init_image, or
    # inpainting with mask_image too (an inpainting checkpoint takes only those); strength as
    # GenerateRequest's, None for its default. Each worker reads the files once.
    init_image: str | None = None
    mask_image: str | None = None
    strength: float | None = None
    eta: float | None = None  # ddim and tcd: GenerateRequest's eta (None: 0)

    @classmethod
    def resolve(cls, profile: HardwareProfile | None, model: ModelDefaults | None = None, say: Callable[[str], None] | None = None,
                **overrides: Any) -> "BenchSettings":
        """Command-line values over the profile's [bench] over the defaults: the reference's own (``model``, from
        bench.artifacts.model_defaults) for a few-step model, and its own size where smaller than the defaults', said to
        ``say``, else BENCH_DEFAULTS."""
        model = model or ModelDefaults()
        own, source, scheduler_class = dict(model.settings), model.source, model.scheduler_class
        # A model smaller than the bench's default size is benched at its own (the tiny and shapes models, 64x64): at
        # 256x256 it makes pictures nobody asks of it, judged so, and a bf16 export's parity failed there (not at 64).
        for side, key in zip(model.size or (), ("height", "width")):
            if side < BENCH_DEFAULTS[key]:
                own[key] = side
        values, taken = {}, {}
        for key in ("prompts", "seeds", "steps", "height", "width", "guidance_scale", "scheduler", "warmup", "runs", "judge"):
            if overrides.get(key) is not None:
                values[key] = overrides[key]
            elif profile is not None and key in profile.bench:
                values[key] = profile.bench[key]
            elif key in own:
                values[key] = taken[key] = own[key]
            else:
                values[key] = BENCH_DEFAULTS[key]
        own_sides = [key for key in ("width", "height") if key in taken]
        if len(own_sides) == 2 and say is not None:
            say(f"benching at the model's own size, {values['width']}x{values['height']} (below the bench's default "
                f"{BENCH_DEFAULTS['width']}x{BENCH_DEFAULTS['height']}; --height/--width to change)")
        elif own_sides and say is not None:  # the other side given (--height 512): the size is no longer the model's own
            side = own_sides[0]
            say(f"benching at the model's own {side}, {values[side]} (below the bench's default {BENCH_DEFAULTS[side]}; "
                f"--{side} to change)")
        taken = {k: v for k, v in taken.items() if k not in ("height", "width")}
        if taken and say is not None:
            run = " at ".join(x for x in (f"{taken['steps']} step{'s' * (taken['steps'] != 1)}" if "steps" in taken else "",
                                           f"guidance {taken['guidance_scale']:g}" if "guidance_scale" in taken else "") if x)
            its = f"its {scheduler_class.removesuffix('Scheduler')} scheduler" if "scheduler" in taken else ""
            say(f"benching at the model's own: {', '.join(x for x in (run, its) if x)} ({source}; --steps/--guidance/--scheduler to change)")
        values["device"] = overrides.get("device") or (profile.device if profile else "cpu")
        values["run"] = dict(profile.run) if profile else {}
        values["rounds"] = 1 if overrides.get("rounds") is None else int(overrides["rounds"])
        values["worker_start"] = overrides.get("worker_start") or "fork"
        for key in ("init_image", "mask_image", "strength", "eta"):
            values[key] = overrides.get(key)
        budget = overrides.get("max_seconds")
        values["max_seconds"] = budget if budget is not None else (profile.bench.get("max_seconds") if profile else None)
        settings = cls(**values)
        settings.validate()
        if say is not None and overrides.get("worker_start") == "fork" and effective_worker_start("fork", settings.device) == "cold":
            # asked for by name (the default is said in README): only the report's settings said it ran cold
            say(f"--worker-start fork: workers start cold here (fork is for cpu and cuda devices on Linux; this is "
                f"{settings.device} on {sys.platform}): load times include the imports")
        return settings

    def validate(self) -> None:
        if not self.prompts:
            raise SdoptError("no prompts to run: the prompt file is empty; put one prompt per line")
        if not self.seeds:
            raise SdoptError("no seeds to run: give --seeds 0,1,2")
        # Each named alone: sdopt optimize, which has --runs, has no --warmup to name.
        if self.runs < 1:
            raise SdoptError(f"--runs {self.runs}: give at least 1 timed run")
        if self.warmup < 0:
            raise SdoptError(f"--warmup {self.warmup}: give 0 or more warm-up runs")
        if self.rounds < 1:
            raise SdoptError(f"--rounds {self.rounds}: give the number of passes over the artifacts (1 or more)")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise SdoptError(f"--max-seconds {self.max_seconds}: give a positive time budget per artifact in seconds")
        devices = sorted({kind for backend in BACKENDS.values() for kind in backend.precisions})
        if device_kind(self.device) not in devices:  # else every artifact failed, then the report's peak probe a traceback
            raise SdoptError(f"--device {self.device}: no backend runs on it; give one of {', '.join(devices)}")
        if self.worker_start not in WORKER_STARTS:
            raise SdoptError(f"--worker-start {self.worker_start}: give one of {', '.join(WORKER_STARTS)}")
        check_scheduler(self.scheduler)
        choose_judge(self.judge, self.prompts)  # an unknown judge, or prompts it cannot read: before any worker runs
        images = image_options(self.init_image, self.mask_image, self.strength)  # readable images, before any worker runs
        for prompt in self.prompts:
            GenerateRequest(prompt=prompt, steps=self.steps, height=self.height, width=self.width, guidance_scale=self.guidance_scale,
                            eta=self.eta, **images).validate()
        for seed in self.seeds:  # as a request's (0 to 2**63-1): a bad one failed every artifact, the reference first
            try:
                with command_line(False):  # one of --seeds (seed=-1), not a --seed flag, which bench has not
                    GenerateRequest(prompt=self.prompts[0], seed=seed).validate()
            except SdoptError as exc:
                raise SdoptError(f"--seeds: {exc}", field="seeds") from None
