"""The quantize command around every quantizer: check, write atomically, describe.

Everything that can be checked without the model's weights is checked before
any slow work and before the output folder exists: scheme, backend, device
(against the capability table), component names, the output path, and the
source (an artifact of the backend the quantizer accepts, not quantized yet).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from sdopt.errors import SdoptError
from sdopt.manifest import COMPONENT_NAMES, Manifest, derive, read_manifest, tokenizer_folders
from sdopt.outputs import atomic_output_dir, check_free_space, check_output_dir, local_inputs
from sdopt.quant import QUANTIZERS, Plan, QuantizedComponents, get_quantizer
from sdopt.quant.schemes import SCHEME_BITS, check_scheme, choose, lookup
from sdopt.source import check_not_replaced, folder_identity, resolve, verify_unless_replaced

# The components quantized when none are named: the UNet holds most of the weights and the text
# encoder most of the rest; the VAE is small and its errors show directly in the pixels.
DEFAULT_COMPONENTS = ("unet", "text_encoder")
# Names that stand for several manifest components.
# A name that stands for several graphs: "unet" is also its shallow branch where the artifact caches
# step features (sdopt.stepcache), so a quantized UNet is quantized on every step, whole or shallow.
# "text_encoder" is every text encoder (SDXL has two); text_encoder_2 alone is named as it is.
ALIASES = {"vae": ("vae_decoder", "vae_encoder"), "unet": ("unet", "unet_shallow"), "text_encoder": ("text_encoder", "text_encoder_2")}


def quantize(
    model: str | Path,
    scheme: str,
    out: str | Path,
    backend: str | None = None,
    components: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    device: str = "cpu",
    force: bool = False,
    options: dict | None = None,
    loras: list | None = None,
    progress: bool = True,
    default_steps: int | None = None,
    default_guidance: float | None = None,
) -> Manifest:
    """Quantize a checkpoint's weights into a new artifact at ``out``; returns its manifest.
    loras: FILE[:SCALE] strings (or LoraFiles) fused into the weights before quantizing (torch sources);
    default_steps/default_guidance: as sdopt.export.run.export's (the source's, if it records them, otherwise)."""
    from sdopt.lora import manifest_fields, notes_of, parse_loras
    from sdopt.runtime.request_defaults import RECORD, record as defaults_record

    check_scheme(scheme)
    defaults = defaults_record(default_steps, default_guidance)
    loras = parse_loras(loras)
    if backend is not None:
        quantizer = get_quantizer(backend)
        capability = lookup(backend, scheme, device)
    check_output_dir(out, force, local_inputs(model))
    source = read_from = resolve(model)
    identity = folder_identity(source)  # checked at the end: replaced meanwhile, the artifact would mix two models
    manifest = read_manifest(source)
    refuse_quantized(source, manifest)
    if loras and manifest.backend != "torch":
        from sdopt.export import EXPORTERS

        target = next((e.name for e in EXPORTERS.values() if e.backend == manifest.backend), manifest.backend)  # onnxruntime: onnx
        raise SdoptError(
            f"--lora fuses LoRAs into PyTorch weights, and {source} is an artifact for {manifest.backend}: fuse them when you "
            f"export it (`sdopt export MODEL --to {target} --lora FILE`), then quantize that"
        )
    if backend is None:
        capability = choose(scheme, device, accepts=manifest.backend)
        quantizer = get_quantizer(capability.backend)
    elif quantizer.accepts != manifest.backend:
        others = sorted(q.name for q in QUANTIZERS.values() if q.accepts == manifest.backend)
        raise SdoptError(
            f"--backend {backend} quantizes {quantizer.accepts} artifacts, and {source} is an artifact for {manifest.backend}: "
            f"give it an artifact of the {quantizer.accepts} backend" + (f", or use --backend {' or '.join(others)} for this one" if others else "")
        )
    if manifest.backend == "torch":
        from sdopt.export.run import source_checkpoint  # refuses anything but a full-precision torch checkpoint

        source, manifest = source_checkpoint(source)
    elif not manifest.inferred:
        verify_unless_replaced(manifest, source, identity, "quantize")
    quantizer.check_options(options or {}, QUANTIZERS)
    chosen, companions = select_components(manifest, components)
    plan = Plan(quantizer, capability, chosen, tuple(exclude), device, dict(options or {}), progress)
    engine = quantizer.engine()  # a missing library is named before the output folder exists
    engine.check_plan(source, manifest, plan)  # what needs the model (--exclude patterns), still before writing
    check_free_space(out, _estimated_size(manifest, plan), f"this {scheme} artifact")

    with atomic_output_dir(out, force=force, inputs=(source,)) as tmp, _fused(source, manifest, loras, Path(tmp)) as (source, manifest, origin):
        result: QuantizedComponents = engine.quantize_components(source, manifest, tmp, plan)
        # What the engine left (not named, or named and left as it was, which the engine notes) is copied as it is.
        entries = {**copy_untouched(source, manifest, tmp, tuple(result.components)), **result.components}
        for name in (*tokenizer_folders(manifest), manifest.scheduler, "model_index.json"):
            copy_path(source / name, tmp / name)
        from sdopt.runtime.versions import library_versions

        quantized = derive(
            manifest, source, tmp, {name: entries[name] for name in manifest.components},  # the source's order
            backend=manifest.backend,
            precision=result.precision or manifest.precision,
            backend_versions={**manifest.backend_versions, **library_versions("torch", "diffusers", "transformers", quantizer.name)},
            static_shapes=manifest.static_shapes,
            export={
                "command": "quantize",
                "scheme": scheme,
                "backend": quantizer.name,
                "backend_chosen": backend is None,
                "device": device,
                "components": list(plan.components),
                "exclude": list(plan.exclude),
                **({"options": plan.options} if plan.options else {}),
                # What the source's graphs are stays true of the quantized ones: its step-feature caching
                # default (Pipeline.default_cache_interval) and the exact rewrites traced into them; so does
                # its truncated-guidance default (Pipeline.default_guidance_end), the embeddings fused into its text
                # encoders' tables (sdopt.embeddings) and its request defaults, unless given again here.
                # The LoRAs fused into the source's weights stay in the quantized ones (those fused here are added below).
                **{key: manifest.export[key] for key in ("deep_cache", "rewrites", "guidance_end", "embeddings", "loras", RECORD) if (manifest.export or {}).get(key)},
                **({RECORD: {**(manifest.export or {}).get(RECORD, {}), **defaults[RECORD]}} if defaults else {}),
            },
            notes=[*result.notes, *notes_of(loras),
                   *(f"{name} is quantized too: it shares its files with {sharer}" for name, sharer in companions.items())],
        )
        if loras:  # quantized from a fused copy: the artifact's source is the checkpoint the user named
            quantized.source = origin
            quantized.export = {**quantized.export, "loras": [*(quantized.export.get("loras") or []), *manifest_fields(loras)["loras"]]}
        quantized.write(tmp)
        check_not_replaced(read_from, identity, "quantize")
    return quantized


@contextlib.contextmanager
def _fused(source: Path, manifest: Manifest, loras: list, out: Path):
    """(source, manifest, the source's origin record) to quantize: with LoRAs, a fused fp32 copy of the
    checkpoint written beside the output (removed after), else the source itself."""
    if not loras:
        yield source, manifest, {}
        return
    from sdopt.lora.fused import fused_checkpoint
    from sdopt.manifest import origin_of

    origin = origin_of(manifest, source)

    with tempfile.TemporaryDirectory(prefix=".lora-fused-", dir=out) as folder:
        fused_checkpoint(source, manifest, loras, Path(folder) / "model")
        yield Path(folder) / "model", read_manifest(Path(folder) / "model"), origin


def refuse_quantized(source: Path, manifest: Manifest) -> None:
    done = {name: c.quantization for name, c in manifest.components.items() if c.quantization}
    if done:
        what = ", ".join(f"{n}: {q.get('scheme')} via {q.get('backend')}" for n, q in done.items())
        original = manifest.source.get("path")
        raise SdoptError(
            f"{source} is already quantized ({what}); quantizing it again would compound the rounding errors. "
            f"Quantize the original full-precision checkpoint{f' ({original})' if original else ''} instead"
        )


def select_components(manifest: Manifest, names: Iterable[str] | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """Manifest component names to quantize, and those among them that come along because they share files with one
    named (each with the one it shares them with: vae_encoder with vae_decoder, Diffusers' one vae/ folder)."""
    names = list(DEFAULT_COMPONENTS if names is None else names)
    if not names:
        raise SdoptError("--components is empty: name at least one of " + ", ".join(component_choices()))
    chosen: list[str] = []
    for name in names:
        if not is_component_name(name):
            raise SdoptError(f"unknown component '{name}'; choose from: {', '.join(component_choices())}")
        present = [n for n in ALIASES.get(name, (name,)) if n in manifest.components]
        if not present:
            raise SdoptError(f"this artifact has no {name}; it has: {', '.join(manifest.components)}")
        chosen += [n for n in present if n not in chosen]
    # A file shared by two components (the Diffusers vae/ folder) is quantized once, for both.
    files = {name: {f.path for f in c.files} for name, c in manifest.components.items()}
    companions: dict[str, str] = {}
    for name in list(chosen):
        for other in manifest.components:
            if other not in chosen and files[other] & files[name]:
                chosen.append(other)
                companions[other] = name
    return tuple(n for n in manifest.components if n in chosen), companions


def is_component_name(name: str) -> bool:
    """Whether --components (or a profile entry's components) may name ``name``: a component, or an alias of some."""
    return name in COMPONENT_NAMES or name in ALIASES


def component_choices() -> list[str]:
    return ["unet", "text_encoder", "text_encoder_2", "vae", "vae_decoder", "vae_encoder"]


def copy_untouched(source: Path, manifest: Manifest, out: Path, quantized: tuple[str, ...]) -> dict:
    """Copy the files of every component not quantized, as they are; their entries are unchanged."""
    entries = {}
    for name, entry in manifest.components.items():
        if name in quantized:
            continue
        for f in entry.files:
            copy_path(source / f.path, out / f.path)
        entries[name] = entry
    return entries


def copy_path(src: Path, dst: Path) -> None:
    if dst.exists() or not src.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _estimated_size(manifest: Manifest, plan: Plan) -> int:
    """The bytes the quantized artifact will take, about: what is copied as it is, and the quantized components' weights
    at the scheme's bits (counted as if the source held fp32, so never more than they take) unless they are stored whole."""
    quantized = {f.path: f.size_bytes for name in plan.components for f in manifest.components[name].files}
    copied = {f.path: f.size_bytes for c in manifest.components.values() for f in c.files if f.path not in quantized}
    kept = SCHEME_BITS[plan.capability.scheme] / 32 if plan.capability.serialized else 1
    return int(sum(copied.values()) + sum(quantized.values()) * kept)
