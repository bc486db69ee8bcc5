"""What the torch quantizers (torchao, quanto, bnb) share: the per-folder flow.

Each backend module provides three hooks on one torch module::

    quantize(module, capability, layers, device) -> module          # in place where it can
    serialize(module, capability) -> (tensors, metadata)            # for safetensors
    deserialize(skeleton, tensors, metadata, capability, layers, device) -> module

and a ``RECIPES`` dict (scheme -> what is applied), recorded in the manifest;
optionally ``manifest_facts(module, capability, layers) -> dict``, more of
what was done to record there (bnb: the layers kept off a CPU kernel).
``quantize_components`` below loads each component folder once in fp32,
chooses its layers from the capability's layer types less --exclude, applies
the backend, and writes the folder: config files as they are, and either the
quantized weights (``quantized.safetensors``) or, for a backend that cannot
serialize them, the original weights and the recipe.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from types import ModuleType

from sdopt.errors import SdoptError
from sdopt.manifest import ComponentEntry, Manifest, files_in
from sdopt.quant import Plan, QuantizedComponents
from sdopt.runtime.torch_quant import LAYERS_KEY, empty_module, load_pretrained, select_layers
from sdopt.runtime.versions import _DISTRIBUTIONS, library_versions

WEIGHTS_NAME = "quantized.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def folders_of(manifest: Manifest, components: tuple[str, ...]) -> dict[str, list[str]]:
    """Component folder -> the components it holds (vae/ holds vae_decoder and vae_encoder)."""
    folders: dict[str, list[str]] = {}
    for name in components:
        folders.setdefault(manifest.components[name].folder, []).append(name)
    return folders


def check_plan(source: Path, manifest: Manifest, plan: Plan) -> None:
    """Before the output folder exists: every --exclude pattern must match a layer, and some layer must remain.

    Uses empty modules built from config.json: seconds, no weights read.
    """
    import torch

    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SdoptError(f"--device {plan.device}: torch sees no CUDA GPU here, and {plan.quantizer.name} quantizes on the device the artifact is for; quantize on the GPU machine, or use --device cpu")
    unused = set(plan.exclude)
    for folder, names in folders_of(manifest, plan.components).items():
        skeleton = empty_module(names[0], source / folder)
        every = select_layers(skeleton, plan.capability.layers)
        for pattern in plan.exclude:
            if len(select_layers(skeleton, plan.capability.layers, [pattern], prefix=folder)) < len(every):
                unused.discard(pattern)
        if not select_layers(skeleton, plan.capability.layers, plan.exclude, prefix=folder):
            raise SdoptError(
                f"nothing left to quantize in {folder}: it has no {'/'.join(plan.capability.layers)} layers outside --exclude"
            )
        del skeleton
    if unused:
        raise SdoptError(
            f"--exclude {', '.join(sorted(unused))} matches no {'/'.join(plan.capability.layers)} layer of "
            f"{', '.join(plan.components)}; patterns are fnmatch patterns on layer names such as "
            "'conv_in', 'unet.conv_out' or '*.attn2.*'"
        )


def quantize_components(source: Path, manifest: Manifest, out: Path, plan: Plan, hooks: ModuleType) -> QuantizedComponents:
    from safetensors.torch import save_file

    cap = plan.capability
    library = ", ".join(f"{_DISTRIBUTIONS.get(k, (k,))[0]} {v}" for k, v in library_versions(plan.quantizer.name).items())
    entries: dict[str, ComponentEntry] = {}
    notes = []
    for folder, names in folders_of(manifest, plan.components).items():
        module = load_pretrained(names[0], source / folder)
        layers = select_layers(module, cap.layers, plan.exclude, prefix=folder)
        module = hooks.quantize(module, cap, layers, plan.device)
        (out / folder).mkdir(parents=True)
        for path in sorted((source / folder).iterdir()):  # config.json and anything else that is not weights
            if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, out / folder / path.name)
        if cap.serialized:
            tensors, metadata = hooks.serialize(module, cap)
            metadata = {**metadata, LAYERS_KEY: json.dumps(layers)}
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, out / folder / WEIGHTS_NAME, metadata=metadata)
            del tensors
        else:
            for f in manifest.components[names[0]].files:
                if f.path.endswith(".safetensors"):
                    shutil.copy2(source / f.path, out / f.path)
        record = {
            "scheme": cap.scheme,
            "backend": plan.quantizer.name,
            "serialized": cap.serialized,
            "layers": len(layers),
            "layer_types": list(cap.layers),
            "exclude": list(plan.exclude),
            "device": plan.device,
            "library": library,
            "options": getattr(hooks, "RECIPES", {}).get(cap.scheme, {}),
        }
        if hasattr(hooks, "manifest_facts"):
            record.update(hooks.manifest_facts(module, cap, layers))
        if cap.serialized:
            record["weights"] = f"{folder}/{WEIGHTS_NAME}"
        files = files_in(out / folder, out, (".safetensors", ".json"))
        for name in names:
            entries[name] = ComponentEntry(folder=folder, files=files, quantization=dict(record))
        notes.append(f"{folder}: {len(layers)} {'/'.join(cap.layers)} layers quantized to {cap.scheme} by {plan.quantizer.name}")
        del module
        gc.collect()
    if not cap.serialized:
        notes.append(f"{plan.quantizer.name} cannot save {cap.scheme} weights: the artifact keeps the original weights and quantizes at load")
    return QuantizedComponents(entries, notes, precision="fp32")
