"""ComponentSpec: what an exporter needs to know of each component, declared once.

Input and output names follow Hugging Face Optimum's ONNX diffusion export
(see runtime/executor.py), so our artifacts and Optimum's are interchangeable.
Exporters read these specs; nothing sniffs class names. Shapes are given as
min/opt/max profiles (TensorRT's convention) over the dynamic axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Dynamic axis names (Optimum's), per input/output: axis index -> name.
Axes = dict[int, str]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: Axes = field(default_factory=dict)  # dynamic axes; the others are fixed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dynamic_axes": {str(k): v for k, v in self.axes.items()}}


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # text_encoder, unet, vae_decoder, vae_encoder
    source_folder: str  # the Diffusers subfolder whose weights it is made of
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Parity at export, on the dummy inputs: max abs error allowed vs PyTorch fp32, per precision.
    tolerance: dict[str, float]

    def dynamic_axes(self) -> dict[str, Axes]:
        return {t.name: dict(t.axes) for t in (*self.inputs, *self.outputs) if t.axes}

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _specs() -> dict[str, ComponentSpec]:
    """The four SD components' specs: names and axes are the same for every SD-1/2 size."""
    image = {0: "batch_size", 2: "height", 3: "width"}
    latent = {0: "batch_size", 2: "height", 3: "width"}
    # Max error relative to the output's largest magnitude. Measured on the tiny and sd15 zoo
    # models (docs/onnx.md): fp32 graphs agree with PyTorch to ~4e-6; fp16 weights move outputs
    # by ~1e-2 of their scale.
    tol32, tol16 = 1e-4, 1e-2
    return {
        "text_encoder": ComponentSpec(
            "text_encoder",
            "text_encoder",
            inputs=(TensorSpec("input_ids", "int64", {0: "batch_size", 1: "sequence_length"}),),
            outputs=(
                TensorSpec("last_hidden_state", "float32", {0: "batch_size", 1: "sequence_length"}),
                TensorSpec("pooler_output", "float32", {0: "batch_size"}),
            ),
            tolerance={"fp32": tol32, "fp16": tol16},
        ),
        "unet": ComponentSpec(
            "unet",
            "unet",
            inputs=(
                TensorSpec("sample", "float32", latent),
                # A float scalar, as Optimum exports it: one timestep for the whole batch, and
                # float because Euler-type schedulers step at fractional timesteps.
                TensorSpec("timestep", "float32"),
                TensorSpec("encoder_hidden_states", "float32", {0: "batch_size", 1: "sequence_length"}),
            ),
            outputs=(TensorSpec("out_sample", "float32", latent),),
            tolerance={"fp32": tol32, "fp16": tol16},
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            "vae",
            inputs=(TensorSpec("latent_sample", "float32", latent),),
            outputs=(TensorSpec("sample", "float32", image),),
            tolerance={"fp32": tol32, "fp16": tol16},
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder",
            "vae",
            inputs=(TensorSpec("sample", "float32", image),),
            outputs=(TensorSpec("latent_parameters", "float32", latent),),
            tolerance={"fp32": tol32, "fp16": tol16},
        ),
    }


SPECS: dict[str, ComponentSpec] = _specs()


def cached_unet_specs(unet: ComponentSpec) -> dict[str, ComponentSpec]:
    """Step-feature caching (sdopt.stepcache): the UNet (``unet``: the family's spec, SDXL's extra inputs
    included) also gives the feature entering its last up block, and the shallow branch takes the same
    inputs and that feature. The feature is at the latent's size, so it shares the latent's axes."""
    feature = TensorSpec("deep_feature", "float32", {0: "batch_size", 2: "height", 3: "width"})
    return {
        "unet": ComponentSpec("unet", "unet", inputs=unet.inputs, outputs=(*unet.outputs, feature), tolerance=unet.tolerance),
        "unet_shallow": ComponentSpec("unet_shallow", "unet", inputs=(*unet.inputs, feature), outputs=unet.outputs, tolerance=unet.tolerance),
    }


def family_specs(family: Any, text_layers: dict[str, int], model: dict[str, Any] | None = None) -> dict[str, ComponentSpec]:
    """The specs of a family's components (sdopt.families): SD's four, its text encoder giving the layers
    AUTOMATIC1111's Clip skip reads too; for SDXL a second text encoder, text encoders giving every layer's
    hidden state, and the UNet's extra inputs; with ``model`` (the model facts), an LCM-distilled UNet's
    ``timestep_cond`` (sdopt.runtime.embedded_guidance).

    text_layers: each text encoder's layer count (its hidden_states run 0..N). Names are Optimum's (but
    ``clip_skip.K``, sdopt's): ``text_encoder_2`` is the projection model whose pooled output is ``text_embeds``.
    """
    specs = dict(SPECS)
    if family.text_outputs == "clip_skip":  # clip_skip.2..N (sdopt.runtime.torch._text_encoder)
        for name in family.text_encoders:
            base = SPECS["text_encoder"]
            layers = tuple(TensorSpec(f"clip_skip.{k}", "float32", {0: "batch_size", 1: "sequence_length"}) for k in range(2, text_layers.get(name, 1) + 1))
            specs[name] = ComponentSpec(name, name, inputs=base.inputs, outputs=(*base.outputs, *layers), tolerance=base.tolerance)
    if family.text_outputs == "hidden_states":
        for name in family.text_encoders:
            pooled = TensorSpec("text_embeds" if name == "text_encoder_2" else "pooler_output", "float32", {0: "batch_size"})
            hidden = TensorSpec("last_hidden_state", "float32", {0: "batch_size", 1: "sequence_length"})
            layers = tuple(TensorSpec(f"hidden_states.{i}", "float32", {0: "batch_size", 1: "sequence_length"}) for i in range(text_layers[name] + 1))
            outputs = (pooled, hidden) if name == "text_encoder_2" else (hidden, pooled)
            specs[name] = ComponentSpec(name, name, inputs=SPECS["text_encoder"].inputs, outputs=(*outputs, *layers), tolerance=SPECS["text_encoder"].tolerance)
    from sdopt.runtime.embedded_guidance import embeds_guidance

    extras = [name for name, _ in family.unet_extras] + (["timestep_cond"] if embeds_guidance(model or {}) else [])
    if extras:
        unet = SPECS["unet"]
        added = tuple(TensorSpec(name, "float32", {0: "batch_size"}) for name in extras)
        specs["unet"] = ComponentSpec("unet", "unet", inputs=(*unet.inputs, *added), outputs=unet.outputs, tolerance=unet.tolerance)
    return specs


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max of batch and image side (pixels), TensorRT-style."""

    batch: tuple[int, int, int] = (1, 2, 8)
    height: tuple[int, int, int] = (256, 512, 1024)
    width: tuple[int, int, int] = (256, 512, 1024)


# Trace at an odd latent side (9 -> 72 px with the SD VAE). Diffusers' UNet decides in Python
# whether to pass explicit upsample sizes: only when the latent is not a multiple of its overall
# down factor. A trace at a multiple of 8 bakes in "scale by 2", and the graph then fails at
# run time for, e.g., a 600 px image (latent 75). An odd latent is a multiple of no down factor,
# so the traced graph takes its upsample sizes from the skip connections and runs at any size.
TRACE_LATENT = 9
# Parity is checked at another batch and a non-square shape, neither side a multiple of 8:
# that proves the axes are dynamic and the upsample sizes follow the input.
CHECK_LATENT = (12, 10)


def latent_image_size(model: dict[str, Any], latent: tuple[int, int] | int) -> tuple[int, int]:
    """(height, width) in pixels of the image whose latent has the given side(s)."""
    h, w = (latent, latent) if isinstance(latent, int) else latent
    return h * model["vae_scale_factor"], w * model["vae_scale_factor"]


def trace_inputs(name: str, model: dict[str, Any]) -> dict[str, np.ndarray]:
    height, width = latent_image_size(model, TRACE_LATENT)
    return dummy_inputs(name, model, batch=2, height=height, width=width)


def check_inputs(name: str, model: dict[str, Any]) -> dict[str, np.ndarray]:
    height, width = latent_image_size(model, CHECK_LATENT)
    return dummy_inputs(name, model, batch=1, height=height, width=width, seed=1)


def dummy_inputs(name: str, model: dict[str, Any], batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic dummy inputs for export tracing and parity checks (``model``: the manifest's model facts)."""
    rng = np.random.default_rng(seed)
    factor, channels, seq = model["vae_scale_factor"], model["latent_channels"], model.get("text_max_length", 77)
    text_hidden = model["cross_attention_dim"]  # what the UNet's cross-attention takes (SDXL: both encoders' widths)
    h, w = height // factor, width // factor
    if name.startswith("text_encoder"):
        # Token ids below the smallest vocabulary we ship (the tiny zoo tokenizer has 1720).
        return {"input_ids": rng.integers(0, 1000, size=(batch, seq)).astype(np.int64)}
    if name == "unet":
        extras = {}
        if "text_embeds_dim" in model:  # SDXL: the pooled text embedding and the size ids (original, crop, target)
            extras["text_embeds"] = rng.standard_normal((batch, model["text_embeds_dim"])).astype(np.float32)
            extras["time_ids"] = np.tile(np.array([height, width, 0, 0, height, width], dtype=np.float32), (batch, 1))
        if model.get("time_cond_proj_dim"):  # an LCM-distilled UNet: the guidance scale's embedding (LCM's default scale)
            from sdopt.runtime.embedded_guidance import scale_embedding

            extras["timestep_cond"] = scale_embedding(8.5, int(model["time_cond_proj_dim"]), batch)
        return {
            "sample": rng.standard_normal((batch, model.get("unet_in_channels", channels), h, w)).astype(np.float32),
            "timestep": np.array(981.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, seq, text_hidden)).astype(np.float32),
            **extras,
        }
    if name == "unet_shallow":  # the UNet's inputs and a deep feature (model["deep_feature_channels"], set by export)
        inputs = dummy_inputs("unet", model, batch, height, width, seed)
        return {**inputs, "deep_feature": rng.standard_normal((batch, model["deep_feature_channels"], h, w)).astype(np.float32)}
    if name == "vae_decoder":
        return {"latent_sample": rng.standard_normal((batch, channels, h, w)).astype(np.float32)}
    if name == "vae_encoder":
        return {"sample": rng.uniform(-1, 1, size=(batch, 3, height, width)).astype(np.float32)}
    raise KeyError(name)
