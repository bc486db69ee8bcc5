"""Exact rewrites: the same computation in fewer operations, applied to a module before an exporter traces it.

Each rewrite keeps every output equal up to floating-point rounding (the export's parity
check against the untouched PyTorch module holds them to fp32 tolerance), so an artifact
with them is still *exact* for ``sdopt optimize``. What was rewritten is recorded in the
manifest (``export.rewrites``); ``sdopt export --no-rewrites`` traces the modules as the
checkpoint defines them (to measure the difference, or to rule the rewrites out).

- ``upsample_transposed_conv`` (upsample.py): nearest ×2 then a 3×3 convolution as one
  stride-2 transposed convolution — 5/9 of those convolutions' FLOPs gone. Applied to the
  VAE decoder, whose upsamplers always double; the UNet's are left as they are because an
  exported UNet takes its upsample sizes from its skip connections (spec.TRACE_LATENT), and
  an odd size is not a doubling. ONNX Runtime's int8 quantizer turns it back (sdopt.quant.undo_upsample): int8, the
  plain form's convolution is the faster one there.
- ``geglu_split`` (geglu.py): a GEGLU's one double-width projection and split as two linear
  layers, value and gate. Applied to the UNet (and its DeepCache halves); same FLOPs, no split.

Optional ones, asked for by name (``sdopt export --rewrite NAME``), because they pay on some
CPUs and were not measured on others, or need one runtime (TARGET_DEFAULTS: a target applies
those of its own runtime unless told ``--no-rewrites``):

- ``transformer_channels_first`` (channels_first.py): the UNet's transformers kept in
  [B, C, H, W], every token-wise linear layer a 1×1 convolution — OpenVINO's int8
  convolutions are ~2.5× its int8 linear layers on a CPU without VNNI. Applied before the
  defaults (it takes in the GEGLUs itself).
- ``attention_by_head`` (attention.py): the UNet's self-attention computed one head at a
  time, so ONNX Runtime holds one head's score matrix instead of all heads' — its memory on
  a CPU at 512² falls from 3.51 to 1.03 GiB on the tiny model, for time (docs/onnx.md).
- ``attention_fused`` (attention.py): every attention of the UNet and the VAE as ONNX Runtime's
  own MultiHeadAttention node (flash attention on a CPU: no N×N score matrix at all) — less
  memory and less time, in a graph only ONNX Runtime reads: the ONNX target's alone, and its
  default.
"""

from __future__ import annotations

from typing import Any

# component -> the rewrites applied to it, by name
REWRITES: dict[str, tuple[str, ...]] = {
    "vae_decoder": ("upsample_transposed_conv",),
    "unet": ("geglu_split",),
    "unet_shallow": ("geglu_split",),
}

# optional rewrite -> the components it applies to
OPTIONAL_REWRITES: dict[str, tuple[str, ...]] = {
    "transformer_channels_first": ("unet", "unet_shallow"),
    "attention_by_head": ("unet", "unet_shallow"),
    "attention_fused": ("unet", "unet_shallow", "vae_decoder", "vae_encoder"),
}

# optional rewrite -> the export targets whose graphs may hold it (any target's, where not named)
REWRITE_TARGETS: dict[str, tuple[str, ...]] = {
    "attention_fused": ("onnx",),  # an ONNX Runtime contrib operator: TensorRT's parser and OpenVINO do not read it
}

# export target -> the target-only rewrites it applies unless told --no-rewrites: ONNX Runtime's fused attention
# (sd15 at 512², 4 steps: peak memory 12.0 -> 8.1 GiB, UNet step 8.56 -> 8.19 s; docs/onnx.md)
TARGET_DEFAULTS: dict[str, tuple[str, ...]] = {
    "onnx": ("attention_fused",),
}


def with_target_defaults(target: str, asked, no_rewrites: bool) -> tuple[str, ...]:
    """The optional rewrites an export to ``target`` applies: those ``asked`` for, then the target's defaults (none
    with ``no_rewrites``)."""
    asked = as_names(asked)
    return asked if no_rewrites else asked + tuple(name for name in TARGET_DEFAULTS.get(target, ()) if name not in asked)


def as_names(names) -> tuple[str, ...]:
    """Rewrite names as a tuple: one name given alone (the Python API's ``rewrite="attention_by_head"``) is one name,
    not its letters."""
    return (names,) if isinstance(names, str) else tuple(names or ())


def check_optional_rewrites(names, no_rewrites: bool, target: str | None = None) -> None:
    """Refuse unknown optional rewrites, one the export ``target`` cannot hold, and asking for one together with
    ``no_rewrites``."""
    from sdopt.errors import SdoptError

    names = as_names(names)
    unknown = sorted(set(names) - set(OPTIONAL_REWRITES))
    if unknown:
        raise SdoptError(f"--rewrite {', '.join(unknown)}: not an optional rewrite; known: {', '.join(sorted(OPTIONAL_REWRITES))}")
    for name in names:
        if target is not None and target not in REWRITE_TARGETS.get(name, (target,)):
            raise SdoptError(f"--rewrite {name} is for --to {' or '.join(REWRITE_TARGETS[name])} only: its graphs need ONNX Runtime's own operators")
    if names and no_rewrites:
        raise SdoptError("--rewrite asks for a rewrite and --no-rewrites for none: give one of them")


def apply_rewrites(component: str, module: Any, optional: tuple[str, ...] = ()) -> dict[str, int]:
    """Rewrite ``module`` (the exporter's ``component``) in place: the ``optional`` rewrites that apply to it, then
    the default ones; how many places each rewrite changed (those that changed any)."""
    from sdopt.rewrite.attention import rewrite_attention
    from sdopt.rewrite.channels_first import rewrite_transformers
    from sdopt.rewrite.geglu import rewrite_geglus
    from sdopt.rewrite.upsample import rewrite_upsamplers

    functions = {"upsample_transposed_conv": rewrite_upsamplers, "geglu_split": rewrite_geglus, "transformer_channels_first": rewrite_transformers,
                 "attention_by_head": rewrite_attention, "attention_fused": lambda m: rewrite_attention(m, "attention_fused")}
    # attention_fused takes what the others leave (each attention rewrite takes attentions no rewrite took yet):
    # asked for together, attention_by_head keeps the self-attention and transformer_channels_first its transformers.
    optional = sorted(optional, key=lambda name: name == "attention_fused")
    chosen = [name for name in optional if component in OPTIONAL_REWRITES[name]] + list(REWRITES.get(component, ()))
    traced = _traced_part(component, module)
    done = {name: functions[name](traced) for name in chosen}
    return {name: count for name, count in done.items() if count}


def unapplied_notes(asked, rewrites: dict[str, dict[str, int]], components) -> list[str]:
    """Notes for the optional rewrites ``asked`` (with a target's defaults) that changed nothing in an exported UNet graph
    they apply to (``rewrites``: what each component recorded): another rewrite took its attention first
    (transformer_channels_first computes its transformers' itself), or the model has none of what it rewrites."""
    notes = []
    for name in as_names(asked):
        for component in OPTIONAL_REWRITES[name]:
            done = rewrites.get(component, {})
            if not component.startswith("unet") or component not in components or name in done:
                continue
            took = [other for other in OPTIONAL_REWRITES if other != name and other in done]
            notes.append(f"{component}: the {name} rewrite changed nothing: " + (f"{', '.join(took)} took what it rewrites" if took else "it has nothing this rewrite applies to"))
    return notes


def _traced_part(component: str, module: Any) -> Any:
    """What of ``module`` the component's graph holds: a VAE component's module is the whole AutoencoderKL (one half of
    it traced), so a rewrite counts the places it changed in that half only."""
    half = {"vae_decoder": "decoder", "vae_encoder": "encoder"}.get(component)
    return getattr(module, half, module) if half else module


def recorded(export: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """The rewrites a manifest's ``export`` section records, per component (a TensorRT artifact keeps its ONNX export's)."""
    export = export or {}
    return dict(export.get("rewrites") or (export.get("onnx") or {}).get("rewrites") or {})
