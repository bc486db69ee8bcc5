"""Calibration data for int8 with calibrated activations: the inputs a component sees while the source artifact
generates from a prompt set, whatever backend quantizes them afterwards (NNCF on OpenVINO artifacts, ONNX Runtime's
quantizer on ONNX artifacts). Imports no backend library: the source artifact's own runtime does the generating.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.errors import SdoptError
from sdopt.prompts import read_prompts
from sdopt.quant.inpainting_calibration import INPAINTING_STRENGTH, calibration_image, calibration_mask

# A small, varied prompt set: activation ranges depend more on the noise level (every step
# is recorded) than on the words, so a few prompts cover the UNet's range.
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at dawn",
    "a bowl of fruit on a wooden table, studio lighting",
    "a city street at night in the rain, neon signs",
    "a portrait of an old man with a beard, oil painting",
    "a snowy mountain landscape under a clear blue sky",
    "a cute cat sleeping on a sofa",
    "an isometric illustration of a tiny house",
)
CALIBRATION_STEPS = 4  # UNet calls recorded per prompt: one sample per step, across the noise levels
# Every prompt is generated with the checkpoint's scheduler, which is what the UNet is calibrated on. The
# VAE decoder sees the final latents, whose scale depends on the scheduler: on the sd15 zoo model at 4
# steps, Euler's and DPM++'s are ~3.6x PNDM's (std 94 against 26), and a decoder calibrated on PNDM's
# alone clipped them (40.8 dB on PNDM's, 21.9 dB on Euler's). So when the decoder is calibrated, every
# prompt is generated once more with the next of these schedulers and only the decoder records it
# (docs/optimize.md, "Calibrating the VAE decoder across schedulers"). The UNet is not: calibrated across
# schedulers it measured worse on Euler (30.9 against 34.8 dB end to end on sd15).
DECODER_SCHEDULERS = ("euler", "euler_a", "dpmpp_2m")
# Components int8-static quantizes with calibrated activations (the others get int8 weights): the UNet,
# and the VAE decoder when asked for (--components unet,vae_decoder), a third of an int8 pipeline's time.
CALIBRATED = ("unet", "unet_shallow", "vae_decoder")  # unet_shallow: a step-cached artifact's shallow branch


def calibration_prompts(value: str | Path | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(read_prompts(value, what="calibration prompt file" if isinstance(value, (str, Path)) else "calibration prompt"))


def check_decoder_schedulers(schedulers, components) -> None:
    """--calibration-schedulers names the runs the VAE decoder alone records: refused without the decoder among ``components``,
    and, before any calibration run, empty or with a name that is no scheduler (NNCF and ONNX Runtime alike: a bad name
    used to fail only when its first run came, after the UNet's calibration runs)."""
    if schedulers is None:
        return
    if "vae_decoder" not in components:
        raise SdoptError("--calibration-schedulers chooses the schedulers the VAE decoder is calibrated on "
                         "(the UNet is calibrated on the checkpoint's): add vae_decoder to --components")
    from sdopt.runtime.schedulers import SCHEDULERS

    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown or not schedulers:
        raise SdoptError(f"--calibration-schedulers {','.join(schedulers)}: give scheduler names from "
                         f"{', '.join(SCHEDULERS)}, comma-separated" + (f" ({', '.join(unknown)} is not one)" if unknown else ""))


class Recorder:
    """Wraps a component's executor: records each call's inputs while ``recording``, then runs it."""

    def __init__(self, component):
        self.component, self.samples, self.recording = component, [], True

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.recording:
            self.samples.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return self.component(**inputs)

    def close(self) -> None:
        self.component.close()


def records(name: str, scheduler: str | None, decoder_schedulers: tuple[str, ...] | None = None) -> bool:
    """Whether a component records a calibration run: the UNet the checkpoint scheduler's; the VAE decoder
    every run by default, but only the named schedulers' when --calibration-schedulers names them (calibrated
    with the checkpoint's small latents too, a decoder named DPM++ 2M measured 29.2 dB on DPM++'s latents
    against 41.7 dB on DPM++'s alone: docs/measurements/decoder_calibration_tiny.json)."""
    if name == "vae_decoder":
        return scheduler is not None or decoder_schedulers is None
    return scheduler is None


def calibration_runs(prompts: tuple[str, ...] | list[str], names: list[str],
                     decoder_schedulers: tuple[str, ...] | None = None) -> list[tuple[int, str, str | None]]:
    """The generations calibration makes, as (seed, prompt, scheduler; None: the checkpoint's): every prompt
    with the checkpoint's scheduler where a component records those, then, when the VAE decoder is
    calibrated, every prompt again with the next of ``decoder_schedulers`` (--calibration-schedulers;
    DECODER_SCHEDULERS when None)."""
    runs = []
    if any(records(name, None, decoder_schedulers) for name in names):
        runs += [(seed, prompt, None) for seed, prompt in enumerate(prompts)]
    if "vae_decoder" in names:
        turns = decoder_schedulers or DECODER_SCHEDULERS
        runs += [(seed, prompt, turns[seed % len(turns)]) for seed, prompt in enumerate(prompts)]
    return runs


def calibration_schedulers(prompts: tuple[str, ...] | list[str], names: list[str], name: str,
                           decoder_schedulers: tuple[str, ...] | None = None) -> list[str]:
    """The schedulers the component ``name`` was calibrated on, in order ("checkpoint": the checkpoint's own)."""
    used = dict.fromkeys(s for _, _, s in calibration_runs(prompts, names, decoder_schedulers) if records(name, s, decoder_schedulers))
    return [s or "checkpoint" for s in used]


def record_inputs(source: Path, prompts: tuple[str, ...] | list[str], names: list[str],
                  decoder_schedulers: tuple[str, ...] | None = None,
                  images: tuple[str, ...] | None = None, progress: bool = True, device: str = "cpu") -> dict[str, list[dict[str, np.ndarray]]]:
    """The inputs each named component sees while the source artifact makes ``calibration_runs`` (guidance on),
    as ``records`` says who records which. ``images`` (an inpainting checkpoint's): run k repaints image
    k mod len(images) under ``calibration_mask(k)``. ``device``: where the source generates (TensorRT's
    calibration runs on the GPU it builds for)."""
    from tqdm import tqdm

    import sdopt
    from sdopt import GenerateRequest

    with warnings.catch_warnings():  # "runs fp32 where bf16 was asked" is the export's business, not calibration's
        warnings.simplefilter("ignore")
        pipe = sdopt.load(source, device=device, verify=False)  # quantize() has verified the files already
    shapes = pipe.manifest.static_shapes or {}
    side = pipe.manifest.model.get("sample_size", 64) * pipe.manifest.model.get("vae_scale_factor", 8)
    recorders = {name: Recorder(pipe.components[name]) for name in names}
    pipe.components.update(recorders)
    height, width = shapes.get("height", side), shapes.get("width", side)
    if images:
        from sdopt.input_images import open_image

        opened = [open_image(path, "--calibration-images") for path in images]
    try:
        for seed, prompt, scheduler in tqdm(calibration_runs(prompts, names, decoder_schedulers), desc=f"calibrating ({', '.join(names)})", unit="image",
                                               disable=not progress):
            for name, recorder in recorders.items():
                recorder.recording = records(name, scheduler, decoder_schedulers)
            repaint = {}
            if images:
                repaint = dict(init_image=calibration_image(opened[seed % len(opened)], height, width), mask_image=calibration_mask(seed, height, width),
                               strength=INPAINTING_STRENGTH)
            pipe.generate(
                GenerateRequest(
                    prompt=prompt,
                    seed=seed,
                    steps=CALIBRATION_STEPS,
                    scheduler=scheduler,
                    height=height,
                    width=width,
                    num_images=shapes.get("batch", 1),
                    **repaint,
                )
            )
    finally:
        pipe.close()
    return {name: recorder.samples for name, recorder in recorders.items()}


def calibration_record(prompts: tuple[str, ...] | list[str], builtin: bool, names: list[str], name: str,
                       decoder_schedulers: tuple[str, ...] | None, samples: int, inpainting: dict | None = None) -> dict[str, Any]:
    """What the manifest says of component ``name``'s calibration (its quantization record's ``calibration``)."""
    record: dict[str, Any] = {
        "prompts": len(prompts),
        "builtin_prompts": builtin,
        "steps_per_prompt": CALIBRATION_STEPS,
        "schedulers": calibration_schedulers(prompts, names, name, decoder_schedulers),
        "samples": samples,
    }
    if inpainting is not None:
        record["inpainting"] = inpainting
    return record
