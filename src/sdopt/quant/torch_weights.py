"""The engine the torch quantizers (torchao, quanto, bnb) share: quantize a component folder, and rebuild it at load.

A quantizer subclasses ``TorchWeights`` and adds only what is its own::

    recipe(module, capability, layers) -> dict                         # what it applied, recorded in the manifest
    quantize(module, capability, layers, device) -> module             # in place where it can
    serialize(module, capability) -> (tensors, metadata)               # for safetensors
    deserialize(skeleton, tensors, metadata, capability, layers, device) -> module
    manifest_facts(module, capability, layers) -> dict                 # optional: more of what was done

``quantize_components`` loads each component folder once in fp32, chooses its
layers from the capability's layer types less --exclude, applies the
quantizer, and writes the folder: config files as they are, and either the
quantized weights (``quantized.safetensors``, with the list of quantized
layers in its metadata) or, for a scheme the library cannot serialize, the
original weights and the recipe. ``load_component`` is the other half, called
by the torch runtime for every component whose manifest entry has a
``quantization`` record:

- ``serialized: true``: the module is built empty from its config.json (no
  weights are allocated) and ``deserialize`` fills it: nothing is quantized
  again and the full-precision weights are not needed.
- ``serialized: false``: the original weights are loaded and quantized here,
  choosing the same layers as the quantize command did.
"""

from __future__ import annotations

import gc
import json
import shutil
from abc import abstractmethod
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable

import torch
from tqdm import tqdm

from sdopt.errors import SdoptError
from sdopt.manifest import ComponentEntry, Manifest, files_in
from sdopt.quant import Plan, QuantizedComponents
from sdopt.quant.engine import Engine
from sdopt.quant.schemes import Capability, lookup
from sdopt.runtime.library_lock import holding_library_lock
from sdopt.runtime.torch import empty_module, load_pretrained
from sdopt.runtime.versions import described_versions

WEIGHTS_NAME = "quantized.safetensors"
# The key in a quantized safetensors file's metadata that lists the quantized layers.
LAYERS_KEY = "sdopt_layers"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def select_layers(module: torch.nn.Module, layer_types: Iterable[str], exclude: Iterable[str] = (), prefix: str = "") -> list[str]:
    """Qualified names of the layers to quantize: the given torch.nn types, less the excluded.

    A pattern (fnmatch) is tested against the layer's name inside its component
    (``down_blocks.0.resnets.0.conv1``) and with the component's folder in
    front (``unet.down_blocks.0.resnets.0.conv1``), so ``unet.conv_in`` and
    ``*.attn2.*`` both work.
    """
    types = tuple(getattr(torch.nn, t) for t in layer_types)
    patterns = tuple(exclude)
    return [
        fqn
        for fqn, m in module.named_modules()
        if fqn and isinstance(m, types) and not any(fnmatch(fqn, p) or fnmatch(f"{prefix}.{fqn}", p) for p in patterns)
    ]


def layer_types_of(module: torch.nn.Module, layers: list[str], layer_types: Iterable[str]) -> list[str]:
    """Which of ``layer_types`` the chosen layers are (a text encoder has no Conv2d: Linear only), in that order."""
    named = dict(module.named_modules())
    return [t for t in layer_types if any(isinstance(named[name], getattr(torch.nn, t)) for name in layers)]


def folders_of(manifest: Manifest, components: tuple[str, ...]) -> dict[str, list[str]]:
    """Component folder -> the components it holds (vae/ holds vae_decoder and vae_encoder)."""
    folders: dict[str, list[str]] = {}
    for name in components:
        folders.setdefault(manifest.components[name].folder, []).append(name)
    return folders


class TorchWeights(Engine):
    """Quantized weights of torch modules, written per component folder and rebuilt at load."""

    # Whether the quantized layers also run with fp16/bf16 activations (load with --precision): on a
    # GPU fp32 compute costs the quantization its speed (sd15 on an H200: torchao int8 computing in
    # fp32 ran 0.41x torch fp16 eager, reports/cuda-h200/). Set where it was checked (tests/test_quant.py).
    half_activations = False

    @abstractmethod
    def recipe(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        """What ``quantize`` applied, as the manifest records it: built from the objects it used, or
        read back from the quantized layers, never a description kept beside them."""

    @abstractmethod
    def quantize(self, module: torch.nn.Module, capability: Capability, layers: list[str], device: str) -> torch.nn.Module: ...

    @abstractmethod
    def serialize(self, module: torch.nn.Module, capability: Capability) -> tuple[dict, dict[str, str]]: ...

    @abstractmethod
    def deserialize(self, skeleton: torch.nn.Module, tensors: dict, metadata: dict[str, str], capability: Capability, layers: list[str], device: str) -> torch.nn.Module: ...

    def manifest_facts(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        """More of what was done to one component, for its manifest record (bnb: the layers kept off a CPU kernel)."""
        return {}

    # --- quantize ---------------------------------------------------------------------------
    def check_plan(self, source: Path, manifest: Manifest, plan: Plan) -> None:
        """Every --exclude pattern must match a layer, and some layer must remain.

        Uses empty modules built from config.json: seconds, no weights read.
        """
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

    def quantize_components(self, source: Path, manifest: Manifest, out: Path, plan: Plan) -> QuantizedComponents:
        from safetensors.torch import save_file

        cap = plan.capability
        library = described_versions(plan.quantizer.name)
        entries: dict[str, ComponentEntry] = {}
        notes = []
        # A bar per component folder: sd15's UNet alone takes half a minute to load, quantize and save on a CPU, and
        # the command said nothing until its summary (43 s for nf4 on a 2-core EPYC).
        folders = tqdm(folders_of(manifest, plan.components).items(), desc=f"quantizing to {cap.scheme}", unit="component",
                       disable=not plan.progress)
        for folder, names in folders:
            folders.set_postfix_str(folder)  # drawn at once: the bar drew its count just before, with the last folder's name
            module = load_pretrained(names[0], source / folder)
            layers = select_layers(module, cap.layers, plan.exclude, prefix=folder)
            kinds = layer_types_of(module, layers, cap.layers)  # before quantizing replaces them
            module = self.quantize(module, cap, layers, plan.device)
            (out / folder).mkdir(parents=True)
            for path in sorted((source / folder).iterdir()):  # config.json and anything else that is not weights
                if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
                    shutil.copy2(path, out / folder / path.name)
            if cap.serialized:
                tensors, metadata = self.serialize(module, cap)
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
                "layer_types": kinds,
                "exclude": list(plan.exclude),
                "device": plan.device,
                "library": library,
                "options": self.recipe(module, cap, layers),
                **self.manifest_facts(module, cap, layers),
            }
            if cap.serialized:
                record["weights"] = f"{folder}/{WEIGHTS_NAME}"
            files = files_in(out / folder, out, (".safetensors", ".json"))
            for name in names:
                entries[name] = ComponentEntry(folder=folder, files=files, quantization=dict(record))
            notes.append(f"{folder}: {len(layers)} {'/'.join(kinds) or 'no'} layers quantized to {cap.scheme} by {plan.quantizer.name}")
            del module
            gc.collect()
        if not cap.serialized:
            notes.append(f"{plan.quantizer.name} cannot save {cap.scheme} weights: the artifact keeps the original weights and quantizes at load")
        return QuantizedComponents(entries, notes, precision="fp32")

    # --- load -------------------------------------------------------------------------------
    # Under LIBRARY_LOCK as a whole, not only its empty_module: deserializing sets new Parameters on the skeleton (a
    # torch load in another thread meanwhile patches register_parameter process-wide, and they went to the meta
    # device), and bnb builds its layers under init_empty_weights itself (two of those interleaved left the patch on
    # for the process: every torch load after failed with "Unsupported device type 'meta'").
    @holding_library_lock
    def load_component(self, name: str, artifact: Path, entry: ComponentEntry, dtype: torch.dtype, device: str) -> torch.nn.Module:
        """The quantized module of one component folder, ready for the torch runtime."""
        quant, path = entry.quantization or {}, artifact / entry.folder
        if dtype != torch.float32 and not self.half_activations:
            raise SdoptError(
                f"{name} holds {self.quantizer.name} {quant.get('scheme')} weights, which run with fp32 activations; "
                "load the artifact without --precision (or with fp32); torchao's quantized weights also run in fp16/bf16"
            )
        capability = lookup(self.quantizer.name, quant.get("scheme", "?"), device)  # cannot run it on that device: say why
        if quant.get("serialized"):
            from safetensors import safe_open
            from safetensors.torch import load_file

            if not quant.get("weights"):  # the schema leaves it optional (recipes, other backends): an edited manifest
                raise SdoptError(f"{name}'s quantization in {artifact / 'sdopt.json'} records stored weights but not their file "
                                 "(weights): the manifest was edited or damaged; quantize the original checkpoint again")
            weights = artifact / quant["weights"]
            try:
                with safe_open(weights, "pt") as f:
                    metadata = f.metadata() or {}
                tensors = load_file(weights) if LAYERS_KEY in metadata else {}
            except Exception as exc:  # safetensors' SafetensorError (a truncated or foreign file), an OSError
                raise SdoptError(f"cannot read {name}'s quantized weights {weights}: {type(exc).__name__}: {exc}; the file is "
                                 "damaged or not sdopt's: quantize the original checkpoint again") from None
            if LAYERS_KEY not in metadata:
                raise SdoptError(f"{weights} lacks its list of quantized layers: it was not written by `sdopt quantize`; quantize again")
            layers = json.loads(metadata[LAYERS_KEY])
            module = self.deserialize(empty_module(name, path), tensors, metadata, capability, layers, device)
        else:
            module = load_pretrained(name, path)
            layers = select_layers(module, capability.layers, quant.get("exclude", ()), prefix=path.name)
            if len(layers) != quant.get("layers", len(layers)):
                raise SdoptError(
                    f"{name}: the recipe chose {quant.get('layers')} layers when quantized, {len(layers)} now "
                    f"(another {self.quantizer.name} or model code version?); quantize the original checkpoint again"
                )
            module = self.quantize(module, capability, layers, device)
        check_materialized(module, name)
        if dtype != torch.float32:  # the float parameters (norms, biases, unquantized layers) and the activations
            module.to(dtype)
        return module.eval()


def check_materialized(module: torch.nn.Module, name: str) -> None:
    """Every parameter and buffer must hold data: a meta tensor left means the file lacked it."""
    empty = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if empty:
        raise SdoptError(
            f"{name}: the quantized weights file lacks {len(empty)} tensor(s) ({', '.join(empty[:3])}...): "
            "the artifact is incomplete; quantize it again"
        )
