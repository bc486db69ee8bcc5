"""Where a model comes from: a local folder, or a Hugging Face hub id where a network exists.

Both end as a local folder read by the same code. sdopt never downloads on its
own initiative: a hub id is fetched only when the user names one, and offline
(HF_HUB_OFFLINE=1, or no network) the error says to download it elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, exception_line, require

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_REVISION = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)@(.+)$")  # org/name@REV, as Hugging Face's tools write a revision
# What a text-to-image run needs, in the layouts sdopt reads (sdopt.layouts: Diffusers', Optimum's ONNX and OpenVINO
# exports); pickles are never fetched (so OpenVINO's weights by name: *.bin are PyTorch's too).
_HUB_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors.index*.json", "*/*.safetensors", "*.onnx", "*/*.onnx*",
                 "*/openvino_model.xml", "*/openvino_model.bin", "tokenizer/*", "tokenizer_2/*", "scheduler/*", "sdopt.json"]
# The Diffusers folders whose weights a run reads (sdopt.layouts.DIFFUSERS_FOLDERS): not the safety checker's.
_WEIGHT_FOLDERS = ("text_encoder", "text_encoder_2", "unet", "vae")

_SHARD = re.compile(r"-\d+-of-\d+$")


def variant_of(name: str) -> str | None:
    """The variant of a safetensors weights file as Hugging Face names them: fp16 for ``model.fp16.safetensors`` and,
    sharded, ``diffusion_pytorch_model.fp16-00001-of-00002.safetensors``; None for plain weights (``model.safetensors``,
    ``model-00001-of-00002.safetensors``)."""
    parts = name.removesuffix(".safetensors").split(".")
    return _SHARD.sub("", parts[-1]) if len(parts) > 1 else None


def loaded_variant(names) -> str | None:
    """The variant from_pretrained is told to read of a folder holding the files ``names``: None where plain weights are
    there (a folder with fp16 copies beside them loads the plain ones); where it has variants only, fp16 if it is one
    (SD 1.5's fp16 and non_ema copies: non_ema is for training), else the first by name. hub_files fetches the same."""
    variants = {variant_of(name) for name in names if name.endswith(".safetensors")}
    if not variants or None in variants:
        return None
    return "fp16" if "fp16" in variants else min(variants)


_PICKLED_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth")


def passed_over_pickle(names) -> str | None:
    """The plain weights a folder holds as a pickle only (``diffusion_pytorch_model.bin`` beside
    ``diffusion_pytorch_model.fp16.safetensors``, as older hub repos have), where a variant loads in their place: sdopt
    never unpickles, so the fp16 copy is what runs, which is said. None where plain safetensors are there, or no pickle."""
    names = sorted(names)
    if loaded_variant(names) is None:
        return None
    plain = [n for n in names if n.lower().endswith(_PICKLED_WEIGHTS) and "." not in n.rpartition(".")[0]]
    return plain[0] if plain else None


def resolve(model: str | Path) -> Path:
    if not str(model).strip():  # Path("") is the current folder: never what an empty argument meant
        raise SdoptError("the model path is empty: give a model folder (for example one written by `sdopt init-model`) or a hub id like org/name")
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    # org/name where ./org is a local folder is a mistyped local path, not a hub id.
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        if not Path(path.parts[0]).exists():
            return _from_hub(text)
        raise SdoptError(f"{model} does not exist: read as a local path since ./{path.parts[0]} is a folder here, not as the hub id "
                         f"{model}; give the model folder's path, or run from a folder without ./{path.parts[0]} to use the hub id")
    pinned = _HUB_REVISION.match(text)
    if pinned and not text.startswith((".", "/")) and not Path(path.parts[0]).exists():
        repo_id, revision = pinned.groups()
        raise SdoptError(f"{model} does not exist: a hub id with a revision (@{revision}) is not supported. To run that revision, "
                         f"download it where a network exists (hf download {repo_id} --revision {revision} --local-dir FOLDER) "
                         f"and give FOLDER; {repo_id} alone runs the main branch")
    raise SdoptError(f"{model} does not exist: give a model folder (for example one written by `sdopt init-model`) or a hub id like org/name")


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """What changes when the folder at this path is replaced by another (an export, quantize or init-model --force
    renames a whole new one in): its device and inode; None while there is none."""
    try:
        stat = folder.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_not_replaced(folder: Path, identity: tuple[int, int] | None, doing: str) -> None:
    """Refuse what ``doing`` made of ``folder`` (whose identity was ``identity`` when it began reading) if another command
    replaced the folder meanwhile: part was read from one model and part from the other."""
    if folder_identity(folder) != identity:
        raise SdoptError(f"{folder} was replaced by another command while this {doing} read it (an export, quantize or "
                         "init-model --force into it), so what it read would mix the two: run again once that command is done")


def verify_unless_replaced(manifest: Any, folder: Path, identity: tuple[int, int] | None, doing: str) -> None:
    """``manifest.verify_files(folder)``, where a mismatch found because another command replaced the folder since
    ``doing`` began reading it (``identity``) is said as that, not as a damaged file: its files are a newer model's."""
    try:
        manifest.verify_files(folder)
    except SdoptError:
        check_not_replaced(folder, identity, doing)
        raise


def hub_files(files: list[str], manifest: dict[str, Any] | None = None) -> list[str]:
    """Which of a hub repo's files to fetch: _HUB_PATTERNS, with the safetensors weights of the folders a run reads only,
    and of each one set: the plain weights, or where a folder has only variants (NAME.fp16.safetensors) the fp16 ones,
    as the loader reads them (sdopt.runtime.torch.weights_variant). SD 1.5's repo also holds fp16 and non-EMA copies
    and the safety checker's weights: about 11.7 GB where a run reads 4.3. An sdopt artifact (``manifest``, its
    sdopt.json as read) is what it lists, whatever the format: OpenVINO's .xml/.bin, TensorRT's engines, a tiny
    decoder's weights; with its tokenizer and scheduler folders and model_index.json. One whose sdopt.json does not
    read as a manifest is fetched by the patterns, and the loader's schema check says what is wrong with it."""
    from fnmatch import fnmatch

    listed = _listed(manifest) if manifest is not None else None
    if listed is not None:
        # Its tokenizer and scheduler folders, and SDXL's second tokenizer (sdopt.families: not imported here,
        # it imports this module back through the loader).
        folders = tuple(f"{sub}/" for sub in (manifest.get("tokenizer", "tokenizer"), manifest.get("scheduler", "scheduler"), "tokenizer_2"))
        return [f for f in files if f in listed or f in ("sdopt.json", "model_index.json") or f.startswith(folders)]
    wanted = [f for f in files if any(fnmatch(f, p) for p in _HUB_PATTERNS)]
    chosen = [f for f in wanted if not f.endswith(".safetensors")]
    for folder in _WEIGHT_FOLDERS:
        weights = [f for f in wanted if f.endswith(".safetensors") and f.rpartition("/")[0] == folder]
        keep = loaded_variant(f.rpartition("/")[2] for f in weights)
        chosen += [f for f in weights if variant_of(f.rpartition("/")[2]) == keep]
    return chosen


def _listed(manifest: dict[str, Any]) -> set[str] | None:
    """The files an sdopt.json lists, None where it is not a manifest (sdopt.manifest.validate says why, once fetched)."""
    try:
        return {str(f["path"]) for c in manifest["components"].values() for f in c["files"]}
    except (KeyError, TypeError, AttributeError):
        return None


def _repo_files(hub, repo_id: str) -> list[str] | None:
    """The repo's file names: from the hub, or offline from the listing huggingface_hub (2.4 on) cached with the download,
    whose offline snapshot_download refuses a snapshot that lacks a file the patterns match (SD 1.5's fp16 copies, which
    hub_files left out); None where neither is known (snapshot_download then reads the cache whatever the patterns)."""
    try:
        if not require("huggingface_hub.constants", "all").HF_HUB_OFFLINE:
            return [f.rfilename for f in hub.model_info(repo_id).siblings or []]  # list_repo_files retries for 23 s
        return [f.path for f in hub.get_cached_repo_tree(repo_id)] if hasattr(hub, "get_cached_repo_tree") else None
    except Exception:  # unreachable, not found, gated, never listed: snapshot_download reads the cache, or says why not
        return None


def _from_hub(repo_id: str) -> Path:
    hub = require("huggingface_hub", "all")
    files = _repo_files(hub, repo_id)
    try:
        manifest = None
        if files is not None and "sdopt.json" in files:  # an sdopt artifact: its manifest says which files it is
            from sdopt.file_reading import read_json

            manifest = read_json(hub.hf_hub_download(repo_id, "sdopt.json"), missing="download it again")
        patterns = _HUB_PATTERNS if files is None else hub_files(files, manifest)
        return Path(hub.snapshot_download(repo_id, allow_patterns=patterns))
    except SdoptError:  # its sdopt.json is not JSON: said as it is
        raise
    except Exception as exc:  # the hub client raises many types for "offline", "not found", "gated"
        raise SdoptError(
            f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {exception_line(exc)}). "
            "If this machine is offline, download the model where a network exists and pass its local folder"
        ) from exc
