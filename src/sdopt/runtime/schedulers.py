"""Scheduler names sdopt accepts, mapped to Diffusers scheduler classes.

Every scheduler is built from the checkpoint's own scheduler config (betas,
timestep spacing, prediction type) with only the overrides below, as the
Diffusers community names them (A1111's sampler names in comments).
"""

from __future__ import annotations

import json
from typing import Any

from sdopt.errors import SdoptError, argument
from sdopt.runtime.library_lock import diffusers_attr

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),  # "Euler a"
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),  # "DPM++ 2M"
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # "PLMS"
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Latent consistency: the sampler of LCM-distilled UNets and of LCM-LoRAs fused into a checkpoint (2-8 steps,
    # guidance 1-2 for a LoRA). It predicts the clean latents each step and adds fresh noise between (it takes the generator).
    "lcm": ("LCMScheduler", {}),
    # Trajectory consistency (TCD-LoRAs fused into a checkpoint, Hyper-SD's and TCD's 2-8 step recipes, guidance
    # 0-1): the request's eta is its gamma, the fresh noise each step adds (its authors suggest 0.3).
    "tcd": ("TCDScheduler", {}),
}


# What AUTOMATIC1111 calls each: (its sampler name, its schedule type where it is not "Automatic"). Its API takes
# these names (sdopt.serve.api_a1111) and its PNG parameters say them (sdopt.infotext).
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler": ("Euler", None),
    "euler_a": ("Euler a", None),
    "ddim": ("DDIM", None),
    "dpmpp_2m": ("DPM++ 2M", None),
    "dpmpp_2m_karras": ("DPM++ 2M", "Karras"),
    "pndm": ("PLMS", None),
    "lms": ("LMS", None),
    "heun": ("Heun", None),
    "unipc": ("UniPC", None),
    "lcm": ("LCM", None),
    "tcd": ("TCD", None),  # as Forge and SD.Next name it
}


def from_a1111(sampler: str, schedule: str | None = None) -> str:
    """The sdopt name of AUTOMATIC1111's sampler, its older combined names ("DPM++ 2M Karras") or sdopt's own name, in
    the schedule type given where sdopt has that variant (Karras for DPM++ 2M); another schedule type is not applied
    (the caller can tell: the plain sampler's name comes back). An SdoptError listing the samplers for any other name."""
    sent = sampler
    if sampler.endswith(" Karras"):
        sampler, schedule = sampler[: -len(" Karras")], "Karras"
    plain = next((ours for ours, (name, kind) in A1111_SAMPLERS.items() if name == sampler and kind is None),
                 sampler if sampler in SCHEDULERS else None)
    if plain is None:
        known = ", ".join(dict.fromkeys(f"{name} (schedule type {kind})" if kind else name for name, kind in A1111_SAMPLERS.values()))
        raise SdoptError(f"sampler {sent!r} is not available here; available: {known}", field="scheduler")
    wanted = (schedule or "automatic").lower()
    if wanted == "automatic":
        return plain
    family = A1111_SAMPLERS[plain][0] if plain in A1111_SAMPLERS else None
    return next((ours for ours, (name, kind) in A1111_SAMPLERS.items() if name == family and (kind or "").lower() == wanted), plain)


def unapplied_schedule(sampler: str, schedule: str | None = None) -> str | None:
    """The schedule type asked with ``sampler`` (or in its combined name, "LMS Karras") that from_a1111 does not apply
    (sdopt has no Karras LMS), for a warning; None where it is applied or none was asked."""
    if sampler.endswith(" Karras"):
        sampler, schedule = sampler[: -len(" Karras")], "Karras"
    if (schedule or "automatic").lower() == "automatic":
        return None
    got = A1111_SAMPLERS.get(from_a1111(sampler, schedule), ("", None))[1]
    return None if (got or "").lower() == schedule.lower() else schedule


def check_scheduler(name: str | None) -> None:
    if name is not None and name not in SCHEDULERS:
        raise SdoptError(f"unknown scheduler '{name}'; known schedulers: {', '.join(SCHEDULERS)}", field="scheduler")


# One scheduler built per (name, checkpoint config), a copy of it handed out per call. Diffusers' from_config reads
# the signature of every class compatible with the one it builds (about 1 ms for PNDM, 2 for Euler a), and a generate
# call built two (check_request's and the loop's; a server's submission a third): a fifth to a third of the loop's
# own work at 64 px, 20 steps (measure/loop_overhead.py). A copy is the same fresh state in a fraction of that (0.15 ms
# for PNDM). A config that is not JSON (never one read from scheduler_config.json) is built every time: its text would
# not tell two apart.
_BUILT: dict[tuple[str | None, str], Any] = {}
_MOST_BUILT = 256  # sampler names x checkpoint configs one process keeps; past it the kept ones are dropped


def make_scheduler(name: str | None, config: dict[str, Any]):
    """A fresh scheduler: ``name`` from SCHEDULERS, or the checkpoint's own class when None."""
    import copy

    check_scheduler(name)
    try:
        key = (name, json.dumps(config, sort_keys=True))
    except (TypeError, ValueError):
        return _build(name, config)
    built = _BUILT.get(key)
    if built is None:
        if len(_BUILT) >= _MOST_BUILT:
            _BUILT.clear()
        built = _BUILT[key] = _build(name, config)
    return copy.deepcopy(built)  # never the kept one: a run changes its scheduler's state


def _build(name: str | None, config: dict[str, Any]):
    cls, overrides = scheduler_class(name, config), ({} if name is None else SCHEDULERS[name][1])
    cls_name = cls.__name__
    if config.get("rescale_betas_zero_snr") and not _accepts(cls, "rescale_betas_zero_snr"):
        # The class would build SD 1.5's noise levels, not the ones the model was trained on, and
        # draw washed-out pictures without a word.
        fits = [other for other in SCHEDULERS if _accepts(scheduler_class(other), "rescale_betas_zero_snr")]
        raise SdoptError(
            f"this checkpoint was trained with zero terminal SNR (rescale_betas_zero_snr), which {cls_name} "
            f"cannot schedule; choose one of: {', '.join(fits)} ({argument('scheduler')})"
        )
    return cls.from_config(config, **overrides)


def check_steps(scheduler: Any, request: Any) -> None:
    """LCMScheduler and TCDScheduler pick their steps from the ``original_inference_steps`` (50) the model was distilled
    on, below the request's strength for img2img: more steps than int(original x strength) was Diffusers' ValueError
    from set_timesteps, a traceback. Said here, before any work, in the request's terms. Every other sampler keeps the
    last int(steps x strength) steps of its schedule for img2img: refused where that is none (those two run all the
    steps below the strength, Diffusers' LatentConsistencyModelImg2ImgPipeline's 4 steps at strength 0.2 too)."""
    import inspect

    from sdopt.request import check_strength_steps

    steps, strength = request.steps, request.strength if request.image_to_image else 1.0
    if request.image_to_image and "strength" not in inspect.signature(scheduler.set_timesteps).parameters:
        check_strength_steps(steps, strength)
    original = getattr(scheduler.config, "original_inference_steps", None)
    if not original:
        _check_last_timestep(scheduler, steps)
    most = int(original * strength) if original else None
    if most is None or steps <= most:
        return
    if most < 1:  # no steps count to ask for: "at most 0 steps"
        raise SdoptError(f"{argument('strength', strength)} leaves {type(scheduler).__name__} no step (int({original} x strength) = 0): "
                         f"raise {argument('strength')} to {1 / original:g} or more, or use another sampler ({argument('scheduler')})", field="strength")
    where = f"{original} x strength {strength:g}" if strength < 1 else f"the {original} steps it was distilled on, original_inference_steps"
    raise SdoptError(f"{argument('steps', steps)}: {type(scheduler).__name__} runs at most {most} steps here ({where}): ask for {most} or fewer"
                     + (", or a higher strength" if strength < 1 else "") + f", or another sampler ({argument('scheduler')})", field="steps")


# The last timestep of each (scheduler class, config, steps) _check_last_timestep has seen. set_timesteps is cheap,
# but in Diffusers' Euler, DPM++, Heun, LMS and UniPC each call warns (numpy's copy=False on a tensor): once per
# request on top of the run's own, it doubled the suite's warnings. At most 1000 step counts per scheduler config.
_LAST_TIMESTEPS: dict[tuple[str, str, int], int] = {}


def _check_last_timestep(scheduler: Any, steps: int) -> None:
    """DDIM and PNDM (SD 1.5's own) add the checkpoint's steps_offset (1) to every timestep: at 1000 steps that reaches
    timestep 1000, past the 0-999 the model was trained on, and Diffusers indexed its schedule out of range (an
    IndexError traceback at the last step, after the whole generation). Said before any work, with the most it takes."""
    trained = getattr(scheduler.config, "num_train_timesteps", None)
    if not trained:
        return
    key = (type(scheduler).__name__, json.dumps(dict(scheduler.config), sort_keys=True, default=str), steps)
    last = _LAST_TIMESTEPS.get(key)
    if last is None:
        scheduler.set_timesteps(steps, device="cpu")  # the pipeline sets them again for its run
        last = _LAST_TIMESTEPS[key] = int(max(scheduler.timesteps))
    if last < trained:
        return
    offset = int(getattr(scheduler.config, "steps_offset", 0) or 0)
    most = trained - max(offset, 1)
    raise SdoptError(f"{argument('steps', steps)}: {type(scheduler).__name__} on this checkpoint's schedule (steps_offset "
                     f"{offset}) would step at timestep {last}, past the "
                     f"{trained} it was trained on: ask for {most} or fewer, or another sampler ({argument('scheduler')})", field="steps")


def scheduler_class(name: str | None, config: dict[str, Any] | None = None):
    """The Diffusers class of a scheduler name from SCHEDULERS, or of the checkpoint's own (its config's) when None."""
    cls_name = SCHEDULERS[name][0] if name is not None else (config or {}).get("_class_name", "PNDMScheduler")
    try:
        cls = diffusers_attr(cls_name) if isinstance(cls_name, str) else None
    except AttributeError:
        cls = None
    if cls is None:
        raise SdoptError(f"the checkpoint's scheduler class {cls_name} is not in this diffusers version")
    if not (isinstance(cls, type) and issubclass(cls, diffusers_attr("SchedulerMixin"))):
        # Built from the config, another Diffusers class would run whatever its constructor does (a UNet of the
        # config's sizes, SD 1.5's by default) and fail on the first step with a traceback.
        raise SdoptError(f"the checkpoint names {cls_name} as its scheduler (model_index.json's scheduler entry or "
                         "scheduler/scheduler_config.json's _class_name), which is not a Diffusers scheduler: the checkpoint "
                         "is damaged or was edited; download or export it again")
    return cls


def name_of(config: dict[str, Any]) -> str | None:
    """The sdopt name that builds the same scheduler as the checkpoint's own (its class, with the same config), so
    that a request naming it makes the same images; None when no name does (a DPM++ config of another order)."""
    own = make_scheduler(None, config)
    for name, (cls_name, _) in SCHEDULERS.items():
        if cls_name == type(own).__name__ and dict(make_scheduler(name, config).config) == dict(own.config):
            return name
    return None


def takes_eta(scheduler) -> bool:
    """Whether this scheduler (a class or an instance) reads eta in its step, as DDIM and TCD do: Diffusers'
    pipelines pass it to those alone."""
    import inspect

    return "eta" in inspect.signature(scheduler.step).parameters


def _accepts(cls, option: str) -> bool:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
