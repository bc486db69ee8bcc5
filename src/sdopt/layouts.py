"""Folder layouts sdopt recognises without an sdopt.json, and their inferred manifests.

Each layout is one entry in ``LAYOUTS``: a name, a test on the folder, and a
function that builds the manifest. Backends that can open another tool's
export (Optimum's ONNX or OpenVINO folders) add an entry here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdopt.errors import SdoptError, exception_line
from sdopt.file_reading import read_json
from sdopt.manifest import ComponentEntry, FileEntry, Manifest, files_in, folder_family, model_info

# Which Diffusers folder holds each component of the torch backend.
DIFFUSERS_FOLDERS = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae"}
_TORCH_SUFFIXES = (".safetensors", ".json")


@dataclass(frozen=True)
class Layout:
    name: str
    matches: Callable[[Path], bool]
    build: Callable[[Path], Manifest]


def _is_diffusers(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()


def _torch_dtype_name(folder: Path) -> str:
    """Precision of a Diffusers folder as saved: fp16 when its UNet config says so, else fp32."""
    try:
        cfg = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))  # JSON is UTF-8 whatever the locale
    except (OSError, json.JSONDecodeError):
        return "fp32"
    return {"float16": "fp16", "bfloat16": "bf16"}.get(str(cfg.get("torch_dtype", "")), "fp32")


def diffusers_components(folder: Path, family: str) -> dict[str, ComponentEntry]:
    from sdopt.families import get_family

    needed = get_family(family).components
    comps = {}
    for name, sub in DIFFUSERS_FOLDERS.items():
        if name not in needed and name != "vae_encoder":
            continue
        sub_dir = folder / sub
        files = files_in(sub_dir, folder, _TORCH_SUFFIXES) if sub_dir.is_dir() else []
        if not any(f.path.endswith(".safetensors") for f in files):
            pickles = list(sub_dir.glob("*.bin")) + list(sub_dir.glob("*.ckpt")) if sub_dir.is_dir() else []
            if pickles:
                raise SdoptError(
                    f"{sub_dir} has only pickled weights ({pickles[0].name}); sdopt loads safetensors only. "
                    "Convert it first (diffusers: pipe.save_pretrained(out, safe_serialization=True))"
                )
            if name == "vae_encoder":
                continue  # text-to-image never needs the encoder
            raise SdoptError(f"{folder} has no {sub}/ weights in safetensors: it is not a complete Diffusers checkpoint "
                             "(a download cut short, a folder left out); download it again")
        comps[name] = ComponentEntry(folder=sub, files=_loaded(files))
        _check_shards(folder, comps[name])
    return comps


_SHARD = re.compile(r".+-[0-9]{5}-of-([0-9]{5})\.safetensors")


def _check_shards(folder: Path, entry: ComponentEntry) -> None:
    """Sharded weights whole: every shard the index names is there, and shards come with their index. A download cut
    short passed `sdopt inspect` (its files hashed as found) and failed only when generate or export loaded it."""
    names = {f.path.rpartition("/")[2] for f in entry.files}
    shards = [n for n in names if _SHARD.fullmatch(n)]
    indexes = [n for n in names if ".safetensors.index." in n]
    if shards and not indexes:
        raise SdoptError(f"{folder / entry.folder} holds sharded weights ({sorted(shards)[0]}, ...) without their "
                         ".safetensors.index.json: the download is incomplete; download it again")
    for index in indexes:
        data = read_json(folder / entry.folder / index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        missing = sorted(set(map(str, weight_map.values())) - names) if isinstance(weight_map, dict) else []
        if missing:
            raise SdoptError(f"{folder / entry.folder}: its {index} names {', '.join(missing)}, which is not there: the "
                             "download is incomplete; download it again")


def _loaded(files: list[FileEntry]) -> list[FileEntry]:
    """The files of a Diffusers folder from_pretrained reads (sdopt.runtime.torch.weights_variant): with plain and fp16
    weights side by side, the plain ones and their shard index; the others are no part of its size or its id."""
    from sdopt.source import loaded_variant, variant_of

    names = [f.path.rpartition("/")[2] for f in files]
    loaded = loaded_variant(names)

    def variant(name: str) -> str | None:
        if ".safetensors.index." in name:  # NAME.safetensors.index.json, NAME.safetensors.index.fp16.json
            return name.rpartition(".safetensors.index.")[2].removesuffix("json").rstrip(".") or None
        return variant_of(name) if name.endswith(".safetensors") else loaded  # config.json: read whichever loads

    return [f for f, name in zip(files, names) if variant(name) == loaded]


def _index(folder: Path) -> dict:
    path = folder / "model_index.json"
    return read_json(path) if path.is_file() else {}


def safety_checker_note(folder: Path) -> str | None:
    """What to say of a checkpoint that ships a safety checker (SD 1.x's model_index.json names StableDiffusionSafetyChecker,
    with its weights in safety_checker/): sdopt never runs it, so its images are not filtered, where Diffusers' own
    pipeline filters them (and warns when told not to). None where the checkpoint has none (SDXL, SD 2.x, the zoo's)."""
    try:
        index = _index(folder)
    except SdoptError:  # a model_index.json that does not read: its own refusal comes where it is needed
        index = {}
    entry = index.get("safety_checker") if isinstance(index, dict) else None
    listed = isinstance(entry, list) and any(part is not None for part in entry)
    if not listed and not (folder / "safety_checker").is_dir():
        return None
    return ("the checkpoint's safety checker is not run: sdopt does not filter images for NSFW content as Diffusers' "
            "pipeline does (README, \"Safety checker\")")


def diffusers_model_info(folder: Path) -> dict:
    return model_info(read_json(folder / "unet" / "config.json"), read_json(folder / "vae" / "config.json"), index=_index(folder))


def _variant_notes(folder: Path, components: dict[str, ComponentEntry]) -> list[str]:
    """Which component folders load variant weights (NAME.fp16.safetensors), not plain ones: inspect says so, and
    names the plain weights passed over where they are a pickle (sdopt.runtime.torch warns of those at load)."""
    from sdopt.source import loaded_variant, passed_over_pickle

    notes = []
    for sub in dict.fromkeys(entry.folder for entry in components.values()):
        names = [p.name for p in (folder / sub).iterdir()]
        variant = loaded_variant(n for n in names if n.endswith(".safetensors"))
        if variant:
            pickled = passed_over_pickle(names)
            notes.append(f"{sub}/ loads its {variant} weights: "
                         + (f"its plain ones are a pickle ({pickled}), never read" if pickled else "it has no plain ones"))
    return notes


def _build_diffusers(folder: Path) -> Manifest:
    family = folder_family(folder)
    components = diffusers_components(folder, family)
    return Manifest(
        backend="torch",
        precision=_torch_dtype_name(folder),
        family=family,
        components=components,
        model=diffusers_model_info(folder),
        inferred=True,
        source={"path": str(folder.resolve())},
        notes=["no sdopt.json: inferred from a Diffusers folder", *_variant_notes(folder, components)],
    )


_ONNX_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")


def _is_optimum_onnx(folder: Path) -> bool:
    """Any component's model.onnx makes an ONNX export: one that lacks the UNet's graph is then said to lack it,
    not taken for a Diffusers checkpoint without weights."""
    return (folder / "model_index.json").is_file() and any((folder / name / "model.onnx").is_file() for name in _ONNX_COMPONENTS)


def _onnx_precision(graph: Path) -> str:
    """fp16 when the graph takes float16 latents, else fp32 (read from the graph's inputs only)."""
    import onnx

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, and whatever else a damaged file raises
        raise SdoptError(f"cannot read {graph}: not a complete ONNX graph ({type(exc).__name__}: {exception_line(exc)}); "
                         "the export is damaged or incomplete: export it again") from None
    types = {i.type.tensor_type.elem_type for i in model.graph.input}
    return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"


def _optimum_export(folder: Path, *, graph: str, suffixes: tuple[str, ...], backend: str, kind: str, precision: Callable[[Path], str], note: str) -> Manifest:
    """The manifest of a folder an Optimum exporter wrote: one ``graph`` file per component folder."""
    from sdopt.families import get_family

    family = folder_family(folder)
    comps = {
        name: ComponentEntry(folder=name, files=files_in(folder / name, folder, suffixes))
        for name in _ONNX_COMPONENTS
        if (folder / name / graph).is_file()
    }
    missing = set(get_family(family).components) - set(comps)
    if missing:
        raise SdoptError(f"{folder} looks like an {kind} export but has no {', '.join(sorted(missing))}/{graph}")
    return Manifest(
        backend=backend,
        precision=precision(folder),
        family=family,
        components=comps,
        model=model_info(read_json(folder / "unet" / "config.json"), read_json(folder / "vae_decoder" / "config.json"), index=_index(folder)),
        inferred=True,
        source={"path": str(folder.resolve())},
        notes=[f"no sdopt.json: inferred from {note}; no parity recorded"],
    )


def _build_optimum_onnx(folder: Path) -> Manifest:
    """A folder written by `optimum-cli export onnx` (ORTStableDiffusionPipeline layout)."""
    return _optimum_export(
        folder, graph="model.onnx", suffixes=(".onnx", ".onnx_data", ".json"), backend="onnxruntime", kind="ONNX",
        precision=lambda f: _onnx_precision(f / "unet" / "model.onnx"),
        note="an Optimum ONNX export (optimum-cli export onnx)",
    )


# Most specific first: an ONNX export also has unet/config.json, like a Diffusers folder.
LAYOUTS: list[Layout] = [
    Layout("optimum-onnx", _is_optimum_onnx, _build_optimum_onnx),
    Layout("diffusers", _is_diffusers, _build_diffusers),
]


def register_layout(layout: Layout) -> None:
    LAYOUTS.insert(0, layout)  # a newly known layout is more specific than the plain Diffusers one


def _is_optimum_openvino(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() and (folder / "unet" / "openvino_model.xml").is_file()


# Weight constants NNCF's weight compression leaves in an IR (optimum-cli export openvino --weight-format int8/int4/nf4...).
_COMPRESSED_WEIGHT_TYPES = ("u8", "i8", "u4", "i4", "nf4", "f4e2m1", "f8e4m3", "f8e5m2")
_CONST_TYPE = re.compile(r'type="Const"[^>]*>\s*<data element_type="(\w+)"')


def _compressed_weights(graph: Path) -> list[str]:
    """The compressed element types among the IR's constants (read from its XML, not compiled): [] for float weights."""
    found = set(_CONST_TYPE.findall(graph.read_text(errors="replace")))
    return [t for t in _COMPRESSED_WEIGHT_TYPES if t in found]


def _build_optimum_openvino(folder: Path) -> Manifest:
    """A folder written by `optimum-cli export openvino` (OVStableDiffusionPipeline layout).

    It records no precision; we run it in fp32 rather than let OpenVINO pick bf16 where the CPU has it.
    Optimum Intel compresses weights when asked (--weight-format): fp32 is then the compute precision
    only, which a note says, so that `sdopt inspect` does not pass an int8-weight export for an fp32 one.
    """
    manifest = _optimum_export(
        folder, graph="openvino_model.xml", suffixes=(".xml", ".bin", ".json"), backend="openvino", kind="OpenVINO",
        precision=lambda f: "fp32",
        note="an Optimum Intel OpenVINO export (optimum-cli export openvino); run in fp32",
    )
    compressed = {name: types for name in manifest.components
                  if (types := _compressed_weights(folder / name / "openvino_model.xml"))}
    if compressed:
        which = ", ".join(f"{name} ({'/'.join(types)})" for name, types in compressed.items())
        manifest.notes.append(f"compressed weights in {which}: weight-compressed by NNCF (Optimum Intel's --weight-format), "
                              "so fp32 is the compute precision, not the weights'")
    return manifest


register_layout(Layout("optimum-openvino", _is_optimum_openvino, _build_optimum_openvino))


def infer_manifest(folder: Path) -> Manifest:
    for layout in LAYOUTS:
        if layout.matches(folder):
            return layout.build(folder)
    singles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".safetensors", ".ckpt") and p.is_file())
    if singles and not (folder / "model_index.json").exists():
        # AUTOMATIC1111's models/Stable-diffusion/, or a hub repo of one checkpoint file: the folder, not the file, given
        from sdopt.manifest import SINGLE_FILE_ADVICE

        raise SdoptError(f"{folder} holds {singles[0]}{f' (and {len(singles) - 1} more)' if len(singles) > 1 else ''} but no "
                         f"model_index.json: a single-file checkpoint (the whole model in one file), not a Diffusers folder; "
                         f"{SINGLE_FILE_ADVICE}")
    raise SdoptError(
        f"{folder} is not an sdopt artifact: it has neither sdopt.json nor a model_index.json with "
        "component folders. Give a folder written by `sdopt export`/`sdopt quantize`/`sdopt init-model`, "
        "or a Diffusers checkpoint folder"
    )


def write_torch_manifest(folder: Path, source: dict | None = None, notes: list[str] | None = None, stamp: bool = True) -> Manifest:
    """Make a Diffusers folder an explicit torch artifact: sdopt.json with every file's sha256."""
    from sdopt.manifest import fingerprint_of, hash_components
    from sdopt.runtime.versions import library_versions

    family = folder_family(folder)
    components = diffusers_components(folder, family)
    hash_components(components, folder)
    manifest = Manifest(
        backend="torch",
        precision=_torch_dtype_name(folder),
        family=family,
        components=components,
        model=diffusers_model_info(folder),
        backend_versions=library_versions("torch", "diffusers", "transformers"),
        source={**(source or {}), "fingerprint": fingerprint_of(components)},
        notes=notes or [],
    )
    manifest.write(folder, stamp=stamp)
    return manifest
