"""load(): artifact folder -> manifest -> backend -> component executors -> Pipeline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, argument
from sdopt.file_reading import read_json
from sdopt.manifest import read_manifest, tokenizer_folders
from sdopt.request import MAX_STEPS
from sdopt.runtime.backends import BACKENDS, check_cuda_index, device_kind, get_backend
from sdopt.runtime.library_lock import holding_library_lock
from sdopt.runtime.pipeline import Pipeline
from sdopt.source import folder_identity, resolve


def load(path: str | Path, device: str = "cpu", precision: str | None = None, verify: bool = True, **options: Any) -> Pipeline:
    """Load an artifact for generation.

    precision: None runs the artifact's own precision; a backend that declares
    ``casts_at_load`` (torch) accepts another. verify: check every file's sha256
    against the manifest before use (skipped only for inferred manifests,
    which record no hashes).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SdoptError(f"load takes an artifact folder (a path or hub id), not {type(path).__name__}")
    if not isinstance(device, str) or not device.strip():
        raise SdoptError(f"{argument('device', device)}: give a device name such as 'cpu' or 'cuda'")
    # Neither is a load option (check_option_values): verify="no" verified, a string being true; precision=0 or "" ran the
    # artifact's own, precision=32 said "32 is not supported".
    if not isinstance(verify, bool):
        raise SdoptError(f"{argument('verify', verify)}: must be True or False (False skips checking each file's sha256)")
    if precision is not None and (not isinstance(precision, str) or not precision.strip()):
        raise SdoptError(f"{argument('precision', precision)}: give a precision name such as 'fp32' or 'bf16', or None for the artifact's own")
    kind, sep, rest = device.strip().partition(":")
    device = kind.lower() + sep + rest  # "CPU", "CUDA:0" as torch names them; what follows the kind as given (openvino:GPU.1)
    check_cuda_index(device)
    check_option_values(options)
    folder = resolve(path)
    # Another command may replace the folder while it loads (an export or quantize --force into it, renamed in whole):
    # what was read before that and what after made a mix of two artifacts, the later files never verified, or failed
    # as "does not match the sha256 ... export the artifact again". Loaded again, from the folder now there.
    for _ in range(_LOAD_TRIES):
        before = folder_identity(folder)
        try:
            pipeline = _load_folder(folder, device, precision, verify, options)
        except Exception:
            if folder_identity(folder) == before:
                raise
            continue
        if folder_identity(folder) == before:
            return pipeline
        pipeline.close()  # the replaced folder's: its sessions and memory go now, not at a later collection
    raise SdoptError(f"{folder} was replaced by another command {_LOAD_TRIES} times while it loaded (an export or quantize "
                     "with --force into it): run again once that command is done")


_LOAD_TRIES = 3


def _load_folder(folder: Path, device: str, precision: str | None, verify: bool, options: dict[str, Any]) -> Pipeline:
    manifest = read_manifest(folder)
    backend = get_backend(manifest.backend)
    precision = precision or manifest.precision
    if precision != manifest.precision and not backend.casts_at_load:
        raise SdoptError(f"this {manifest.backend} artifact was exported in {manifest.precision}; it cannot run in {precision}. "
                         + _export_advice(manifest.backend, precision))
    try:
        backend.check(device, precision)
    except SdoptError:
        # A device this machine lacks is said first: "fp32 is not supported on npu; choose fp16" sent the user to export
        # again, only for that load to say there is no NPU here.
        present = getattr(backend.implementation(), "check_device", None) if device_kind(device) in backend.precisions else None
        if present:
            present(device)
        raise
    backend.check_options(options, BACKENDS)
    if manifest.inferred:
        # Said once per folder per process (Python shows a warning once per place and text).
        warnings.warn(f"{folder} has no sdopt.json: its files are loaded unverified (nothing records their sha256)", UserWarning, stacklevel=3)
    elif verify:
        manifest.verify_files(folder)
    impl = backend.implementation()
    built = dict(manifest.static_shapes or {})  # OpenVINO's reshape option clears them on the manifest: a request without a size still gets them
    components = impl.load_components(folder, manifest, device, precision, options)
    loras = getattr(impl, "lora_runtime", None)  # backends that apply LoRAs per request (torch)
    token_tables = getattr(impl, "token_tables", None)  # backends whose text encoders take embeddings at run time (torch)
    return Pipeline(
        manifest,
        components,
        tokenizers=[load_tokenizer(folder / sub) for sub in tokenizer_folders(manifest)],
        scheduler_config=checkpoint_scheduler_config(folder, manifest.scheduler),
        device=device,
        precision=precision,
        folder=folder,
        loras=loras(components, manifest) if loras else None,
        token_tables=token_tables(components, manifest) if token_tables else None,
        built_shapes=built,
    )


def checkpoint_scheduler_config(folder: Path, sub: str) -> dict[str, Any]:
    """The scheduler the checkpoint runs by default: its config, of the class model_index.json names where that
    differs from the config's own ``_class_name`` — Diffusers builds the class model_index names from that config."""
    config = read_json(folder / sub / "scheduler_config.json")
    index = folder / "model_index.json"
    named = read_json(index).get(sub) if index.is_file() else None
    if isinstance(named, list) and len(named) == 2 and isinstance(named[1], str) and named[1] != config.get("_class_name"):
        config = {**config, "_class_name": named[1]}
    return config


@holding_library_lock  # Transformers' lazy lookup of CLIPTokenizer (sdopt.runtime.library_lock)
def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    if not folder.is_dir():
        raise SdoptError(f"{folder} is missing: the artifact has no tokenizer; export it again")
    try:
        return CLIPTokenizer.from_pretrained(folder)
    except Exception as exc:  # a damaged tokenizer.json or vocab: json's, tokenizers' and Transformers' own errors
        text = " ".join(str(exc).split())
        raise SdoptError(f"cannot read the tokenizer in {folder}: {type(exc).__name__}: {text[:300] or 'no message'}; its files "
                         "(tokenizer.json, vocab.json, merges.txt) are damaged or incomplete: download or export it again") from None


def _export_advice(backend: str, precision: str) -> str:
    """What to do for an artifact in another precision: an export target for this backend that writes it, or the
    targets that write it at all."""
    from sdopt.export import EXPORTERS

    targets = [e.name for e in EXPORTERS.values() if precision in e.precisions]
    if any(EXPORTERS[t].backend == backend for t in targets):
        return f"Export it again with {argument('precision', precision)}"
    if targets:
        return (f"sdopt exports no {backend} artifact in {precision}: export for {' or '.join(targets)} instead "
                f"(sdopt export MODEL --to {targets[0]} --precision {precision}), or run the Diffusers checkpoint with {argument('precision', precision)}")
    return f"No export runs in {precision}: run the Diffusers checkpoint with {argument('precision', precision)}"


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# What each load option's value must be (which backend takes which: runtime/backends.py), checked before any
# work so a wrong one is an SdoptError naming it, not a TypeError from deep in a backend.
OPTION_VALUES: dict[str, tuple[Any, str]] = {
    **{name: (_flag, "true or false") for name in ("attention_slicing", "vae_tiling", "cpu_offload", "channels_last", "reshape")},
    "deep_cache": (lambda v: _flag(v) or (_count(v) and v <= MAX_STEPS), f"true, or the interval: an integer from 1 (every step whole) to {MAX_STEPS}"),
    "compile": (lambda v: _flag(v) or isinstance(v, str), "true, false, or a torch.compile mode name"),
    "threads": (_count, "a positive number of threads"),
    "provider": (lambda v: isinstance(v, str), "an ONNX Runtime provider kind: cpu, cuda or tensorrt"),
    "run_settings": (lambda v: isinstance(v, dict), "a dict of the backend's own settings"),
    "cache_dir": (lambda v: v is False or isinstance(v, (str, os.PathLike)), "a folder path, or False for no cache"),
}


def check_option_values(options: dict[str, Any]) -> None:
    for name, value in options.items():
        fits, what = OPTION_VALUES.get(name, (None, ""))
        if value is not None and fits is not None and not fits(value):
            raise SdoptError(f"{argument(name, value)}: must be {what}")
