"""The PyTorch backend: Diffusers and Transformers modules behind the executor contract."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdopt.errors import SdoptError, argument, short_of_memory_or_threads
from sdopt.runtime.compiled import COMPILED_COMPONENTS, compile_components, compile_setting, original
from sdopt.manifest import Manifest
from sdopt.runtime.library_lock import holding_library_lock, without_loading_bars

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = {dtype: name for name, dtype in DTYPES.items()}
FULL_PRECISION_INPUTS = {"timestep"}
# OpenMP reads it once, when torch loads; None: GNU OpenMP's spin, then sleep (docs/optimize.md, "Threads")
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")


class TorchComponent:
    """Runs ``forward(module, **tensors) -> {name: tensor}`` under inference mode.

    With ``offload`` the module lives on the CPU and visits the GPU only for its
    own call: the model-level CPU offload of Diffusers, which trades speed for
    GPU memory.
    """

    def __init__(self, module: torch.nn.Module, forward: Callable, device: str, dtype: torch.dtype, offload: bool = False):
        self.module = module.eval()
        self.forward = forward
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = offload
        self.module.to("cpu" if offload else self.device)
        self.extra_settings: dict[str, Any] = {}  # load options that change how it runs (compile, channels_last)

    @property
    def runs(self) -> str:
        """The precision it computes in (SDXL's VAE: fp32 in an fp16 artifact), for the bench's per-stage ceilings."""
        return PRECISIONS[self.dtype]

    @property
    def settings(self) -> dict[str, Any]:
        """What a run's speed depends on, for the bench report (read when asked: threads may change after load)."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "intra_op_threads": torch.get_num_threads(),
                "inter_op_threads": torch.get_num_interop_threads(), "offload": self.offload,
                "omp_wait_policy": OMP_WAIT_POLICY, **self.extra_settings}

    def _tensor(self, name: str, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        # The timestep stays float32, as in Diffusers: in bf16, 981 would round to 980
        # before the UNet's sinusoidal embedding (which it computes in float32 anyway).
        if t.is_floating_point() and name not in FULL_PRECISION_INPUTS:
            t = t.to(self.dtype)
        return t.to(self.device)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            if self.offload:
                self.module.to(self.device)
            try:
                out = self.forward(self.module, **{k: self._tensor(k, v) for k, v in inputs.items()})
                # .cpu() synchronises with the device, so timings around this call are honest.
                return {k: v.float().cpu().numpy() for k, v in out.items()}
            finally:
                if self.offload:
                    self.module.to("cpu")

    def close(self) -> None:
        self.module = None


def _text_encoder(m, input_ids, layers: str | None = None):
    """Optimum's output names: CLIPTextModel's last_hidden_state and pooler_output, or a projection
    model's text_embeds (SDXL's second encoder); and the family's ``layers`` (Family.text_outputs):
    "hidden_states", hidden_states.0..N (SDXL reads N-1), or "clip_skip", clip_skip.2..N: the hidden
    state AUTOMATIC1111's Clip skip K reads, the last layer but K - 1 through the final layer norm
    (Diffusers' encode_prompt with clip_skip=K-1). Every layer is computed anyway: keeping them is free."""
    out = m(input_ids=input_ids, output_hidden_states=layers is not None)
    pooled = {"text_embeds": out.text_embeds} if hasattr(out, "text_embeds") else {"pooler_output": out.pooler_output}
    extra = {}
    if layers == "hidden_states":
        extra = {f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)}
    elif layers == "clip_skip":
        norm = getattr(m, "text_model", m).final_layer_norm  # transformers 5 has no text_model level
        extra = {f"clip_skip.{k}": norm(out.hidden_states[-k]) for k in range(2, len(out.hidden_states))}
    return {"last_hidden_state": out.last_hidden_state, **pooled, **extra}


def _added(text_embeds, time_ids, timestep_cond=None) -> dict:
    """SDXL's UNet also takes the pooled text embedding and the size ids (Diffusers' added_cond_kwargs);
    an LCM-distilled UNet the guidance scale's embedding (timestep_cond: sdopt.runtime.embedded_guidance)."""
    added = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}} if text_embeds is not None else {}
    return {**added, "timestep_cond": timestep_cond} if timestep_cond is not None else added


def _unet(m, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, timestep_cond=None):
    out = m(sample, timestep, encoder_hidden_states=encoder_hidden_states, **_added(text_embeds, time_ids, timestep_cond))
    feature = getattr(out, "deep_feature", None)  # a step-cached UNet (sdopt.stepcache) also gives its deep feature
    return {"out_sample": out.sample} if feature is None else {"out_sample": out.sample, "deep_feature": feature}


def _unet_shallow(m, sample, timestep, encoder_hidden_states, deep_feature, text_embeds=None, time_ids=None, timestep_cond=None):
    return {"out_sample": m(sample, timestep, encoder_hidden_states, deep_feature, **_added(text_embeds, time_ids, timestep_cond))}


def _vae_decoder(m, latent_sample):
    return {"sample": m.decode(latent_sample).sample}


def _vae_encoder(m, sample):
    # The Gaussian's parameters (mean and log-variance), as Optimum's ONNX vae_encoder returns them.
    return {"latent_parameters": m.encode(sample).latent_dist.parameters}


FORWARDS = {"text_encoder": _text_encoder, "text_encoder_2": _text_encoder, "unet": _unet, "unet_shallow": _unet_shallow, "vae_decoder": _vae_decoder, "vae_encoder": _vae_encoder}


@holding_library_lock  # Diffusers' and Transformers' lazy lookups (sdopt.runtime.library_lock)
def module_class(name: str):
    """The Diffusers/Transformers class of a component (vae_decoder and vae_encoder share AutoencoderKL)."""
    from sdopt.runtime.versions import require_compatible_libraries

    require_compatible_libraries()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection, "unet": UNet2DConditionModel,
            "vae_decoder": AutoencoderKL, "vae_encoder": AutoencoderKL}[name]


def _is_diffusers(cls) -> bool:
    return hasattr(cls, "load_config")  # Diffusers' ConfigMixin; Transformers models read a config_class


def transformers_dtype_option() -> str:
    """The keyword Transformers' from_pretrained and _from_config take the dtype by: ``dtype`` since 4.56, whose
    Transformers 5 reads no other; ``torch_dtype`` before, where ``dtype`` reaches the model's __init__ as a TypeError."""
    import transformers

    from sdopt.runtime.versions import release

    return "dtype" if release(transformers.__version__) >= (4, 56) else "torch_dtype"


@holding_library_lock  # from_pretrained builds on the meta device, process-wide (sdopt.runtime.library_lock)
def load_pretrained(name: str, path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """One component's module with its weights, from its folder."""
    cls = module_class(name)
    dtype_arg = "torch_dtype" if _is_diffusers(cls) else transformers_dtype_option()
    if not (Path(path) / "config.json").is_file():  # Transformers would build a default model and fail on its shapes
        raise SdoptError(f"cannot load {name}: {path} has no config.json (what the weights' architecture is); the checkpoint "
                         "is incomplete: download or export it again")
    from sdopt.source import passed_over_pickle

    variant = weights_variant(path)
    pickled = passed_over_pickle(p.name for p in Path(path).iterdir()) if variant else None
    if pickled:  # the fp16 copy runs where the full-precision weights are a pickle: not in silence
        warnings.warn(f"{path} loads its {variant} weights: its plain weights are a pickle ({pickled}), which sdopt never "
                      "reads; to run those, convert them to safetensors (diffusers: pipe.save_pretrained(out, safe_serialization=True))",
                      UserWarning, stacklevel=2)
    try:
        with without_loading_bars():
            return cls.from_pretrained(path, use_safetensors=True, **{dtype_arg: dtype}, **({"variant": variant} if variant else {}))
    except Exception as exc:  # a damaged or incomplete folder: safetensors', Diffusers' and Transformers' own errors
        if short_of_memory_or_threads(exc):  # this process's limits, not the folder: "damaged" sent users to download it again
            raise
        text = " ".join(str(exc).split())
        raise SdoptError(f"cannot load {name} from {path}: {type(exc).__name__}: {text[:300] or 'no message'}"
                         f"{'...' if len(text) > 300 else ''}; the checkpoint is damaged or incomplete (a file truncated, "
                         "config.json missing): download or export it again") from None


def weights_variant(path: Path) -> str | None:
    """The variant of a folder that holds only variant weights (Hugging Face's ``NAME.fp16.safetensors``), which
    from_pretrained reads only when told (fp16 of several); None where plain weights are there."""
    from sdopt.source import loaded_variant

    return loaded_variant(p.name for p in Path(path).glob("*.safetensors"))


@holding_library_lock  # init_empty_weights patches torch.nn.Module process-wide (sdopt.runtime.library_lock)
def empty_module(name: str, path: Path) -> torch.nn.Module:
    """The module's structure from its config.json, parameters on the meta device (no memory).

    Buffers stay real (accelerate's default): they are not all in state dicts
    (CLIP's position_ids is not persistent), so they must keep their values.
    """
    from accelerate import init_empty_weights

    cls = module_class(name)
    if _is_diffusers(cls):
        config = cls.load_config(path)
        with init_empty_weights():
            return cls.from_config(config)
    config = cls.config_class.from_pretrained(path)
    with init_empty_weights():
        return cls._from_config(config, **{transformers_dtype_option(): torch.float32})


def load_module(folder: Path, manifest: Manifest, name: str, dtype: torch.dtype, device: str = "cpu") -> torch.nn.Module:
    """One component's Diffusers/Transformers module (vae_decoder and vae_encoder: the whole AutoencoderKL)."""
    entry = manifest.components[name]
    if entry.replaced:  # a tiny decoder in the full one's place (sdopt.decoder)
        from sdopt.decoder.tiny import load_tiny_decoder

        return load_tiny_decoder(folder / entry.folder, entry.replaced["input_scale"], dtype).to(device)
    if entry.quantization:
        # Quantized weights (`sdopt quantize`): the quantizer that wrote them builds the module.
        from sdopt.quant import get_quantizer

        engine = get_quantizer(entry.quantization.get("backend", "?")).engine()
        return engine.load_component(name, folder, entry, dtype, device)
    return load_pretrained(name, folder / entry.folder, dtype)


def component_dtype(manifest: Manifest, name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype ``name`` runs in when the artifact runs in ``dtype`` (SDXL's VAE stays float32 under fp16:
    Manifest.component_precision)."""
    return DTYPES[manifest.component_precision(name, PRECISIONS[dtype])]


def load_modules(folder: Path, manifest: Manifest, dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.nn.Module]:
    """The Diffusers/Transformers modules of a torch artifact, one per component folder, each in its
    ``component_dtype``."""
    by_folder: dict[str, torch.nn.Module] = {}
    modules = {}
    for name, entry in manifest.components.items():
        if entry.replaced:
            modules[name] = load_module(folder, manifest, name, component_dtype(manifest, name, dtype), device)
            continue
        if entry.folder not in by_folder:  # vae_decoder and vae_encoder share one AutoencoderKL
            by_folder[entry.folder] = load_module(folder, manifest, name, component_dtype(manifest, name, dtype), device)
        modules[name] = by_folder[entry.folder]
    return modules


def load_components(folder: Path, manifest: Manifest, device: str, precision: str, options: dict[str, Any]) -> dict:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SdoptError("device 'cuda' was asked for but torch sees no CUDA GPU (is the CUDA build of torch installed? see README)")
    dtype = DTYPES[precision]
    setting = compile_setting(options.get("compile"), device)  # refused before any weights load
    if precision == "bf16" and device.startswith("cpu"):
        from sdopt.hardware import BF16_ISA, cpu_lacks_bf16, hidden_by_cap

        if cpu_lacks_bf16():
            where = hidden_by_cap(BF16_ISA) or "the CPU has no AVX512-BF16 or AMX"  # under a oneDNN cap, the CPU has them
            warnings.warn(
                f"bf16 where {where}: PyTorch emulates it, which is far slower than fp32 "
                "(measured in docs/openvino.md). Use fp32 here, or OpenVINO/ONNX for speed",
                UserWarning,
                stacklevel=2,
            )
    if options.get("threads"):
        # torch's intra-op pool is the process's, not the artifact's: the last load that sets it wins
        torch.set_num_threads(int(options["threads"]))
    modules = load_modules(folder, manifest, dtype, device)
    if options.get("attention_slicing") and "unet" in modules:
        # Diffusers' sliced attention replaces PyTorch's scaled-dot-product attention, whose kernels never hold a whole
        # attention matrix; a slice holds its heads' whole matrix. Kept for who asks, but it costs memory, not saves it.
        warnings.warn(
            f"{argument('attention_slicing')} uses more memory, not less, and is slower: it replaces PyTorch's scaled-dot-product "
            "attention, which already computes attention without holding the whole attention matrix, with Diffusers' sliced "
            "attention, which holds each slice's (measured on the tiny model: 1.5x the peak memory and 4x the time at 512x512, "
            f"over 7x the memory at 1024x1024). Leave it off; for a large image's decode use {argument('vae_tiling')}",
            UserWarning,
            stacklevel=2,
        )
        modules["unet"].set_attention_slice("auto")
    if options.get("vae_tiling") and "vae_decoder" in modules:
        modules["vae_decoder"].enable_tiling()
    if options.get("deep_cache") and "unet" in modules:
        from sdopt.stepcache.unet import split

        manifest.pipeline_family.refuse("deep_cache", "step-feature caching (deep_cache)")
        modules["unet"], modules["unet_shallow"] = split(modules["unet"])
        # deep_cache=N: requests that do not say cache_interval run every N-th step whole (True: 1, none).
        manifest.export = {**manifest.export, "deep_cache": {"interval": int(options["deep_cache"]), "set": "at load"}}
    offload = bool(options.get("cpu_offload"))
    if offload and not device.startswith("cuda"):
        raise SdoptError(f"{argument('cpu_offload')} moves components between GPU and CPU memory: it needs {argument('device', 'cuda')}")
    text_layers = manifest.pipeline_family.text_outputs
    if options.get("channels_last"):  # NHWC convolutions: what cuDNN and oneDNN run fastest (the VAE's encoder shares its module)
        for name in ("unet", "vae_decoder"):
            if name in modules:
                modules[name].to(memory_format=torch.channels_last)
    components = {name: TorchComponent(m, forward_of(name, text_layers), device, component_dtype(manifest, name, dtype), offload)
                  for name, m in modules.items()}
    # What the text encoders give (Pipeline.clip_skip_layers asks), named as an export of them would be.
    from sdopt.export.spec import family_specs

    encoders = [name for name in manifest.pipeline_family.text_encoders if name in modules]
    specs = family_specs(manifest.pipeline_family, {name: int(modules[name].config.num_hidden_layers) for name in encoders})
    for name in encoders:
        components[name].output_names = list(specs[name].output_names)
    if setting:
        compile_components(components, setting)
    for name, component in components.items():  # what the bench's run settings show per component
        component.extra_settings = {"compile": setting if name in COMPILED_COMPONENTS else None,
                                    "channels_last": bool(options.get("channels_last")) and not name.startswith("text_encoder")}
    return components


def lora_runtime(components: dict[str, TorchComponent], manifest: Manifest):
    """Per-request LoRAs (sdopt.lora.runtime) on this artifact's modules."""
    from sdopt.lora.runtime import RuntimeLoras

    return RuntimeLoras({name: _lora_target(c.module) for name, c in components.items()}, manifest.pipeline_family)


def token_tables(components: dict[str, TorchComponent], manifest: Manifest) -> dict[str, Any]:
    """The text encoders' modules, whose token tables take textual inversion embeddings at run time (sdopt.embeddings)."""
    return {name: components[name].module for name in manifest.pipeline_family.text_encoders}


def _lora_target(module: Any) -> Any:
    """The Diffusers module LoRA adapters go into: under torch.compile's wrapper, and under step-feature caching's
    DeepUNet (whose shallow branch holds the same blocks, so it runs the adapted layers too)."""
    from sdopt.stepcache.unet import DeepUNet

    module = original(module)
    return module.unet if isinstance(module, DeepUNet) else module


def forward_of(name: str, text_layers: str | None = None) -> Callable:
    """How the torch backend (and what exporters trace) calls a component: its FORWARDS entry, text
    encoders giving the layers their family reads (``text_layers``: Family.text_outputs)."""
    if text_layers and name.startswith("text_encoder"):
        import functools

        return functools.partial(_text_encoder, layers=text_layers)
    return FORWARDS[name]
