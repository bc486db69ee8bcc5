"""The Manifest: an artifact's identity, stored as ``sdopt.json`` in its folder.

A loader trusts nothing the manifest does not describe: which backend runs the
artifact, in which precision, which files make each component (with sha256),
the source checkpoint's fingerprint, and the parity measured at export. A plain
Diffusers folder (or another known layout) has no sdopt.json; its manifest is
inferred in memory, marked ``inferred``, and carries no hashes to check.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from sdopt.errors import SdoptError
from sdopt.families import DEFAULT as FAMILY  # a manifest that names no family; sdopt.families has them all
from sdopt.file_reading import read_json, sha256_file
from sdopt.hash_records import recorded_sha256
from sdopt.outputs import INCOMPLETE_MARKER

MANIFEST_NAME = "sdopt.json"
SCHEMA_VERSION = 1
COMPONENT_NAMES = ("text_encoder", "text_encoder_2", "unet", "unet_shallow", "vae_decoder", "vae_encoder")


@dataclass
class FileEntry:
    path: str  # relative to the artifact folder, with forward slashes
    size_bytes: int
    sha256: str | None = None  # None only in inferred manifests


@dataclass
class ComponentEntry:
    folder: str
    files: list[FileEntry]
    precision: str | None = None
    quantization: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # A component that computes something else than the source's (a tiny decoder in the full one's
    # place, sdopt.decoder): what replaced it, how it is fed, and how close it measured.
    replaced: dict[str, Any] | None = None

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


def quantization_label(by_component: dict[str, dict[str, Any]] | None) -> str | None:
    """What components were quantized to ({component: its quantization record}), e.g. "int8 (torchao) weights";
    None when none were. Said by the bench's tables and each image's parameters."""
    schemes = sorted({(q.get("scheme"), q.get("backend")) for q in (by_component or {}).values() if q})
    return ", ".join(f"{scheme} ({backend}) " + ("weights and activations" if scheme.endswith("-static") else "weights")
                     for scheme, backend in schemes) or None


@dataclass
class Manifest:
    backend: str
    precision: str
    components: dict[str, ComponentEntry]
    # What the denoising loop needs to know of the model, whatever runs it:
    # latent_channels, vae_scale_factor, vae_scaling_factor, sample_size, ...
    model: dict[str, Any] = field(default_factory=dict)
    family: str = FAMILY
    schema_version: int = SCHEMA_VERSION
    sdopt_version: str = ""
    created: str = ""
    backend_versions: dict[str, str] = field(default_factory=dict)
    inferred: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "tokenizer"
    scheduler: str = "scheduler"
    static_shapes: dict[str, int] | None = None
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # --- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.static_shapes:
            data.pop("static_shapes")
        for component in data["components"].values():
            if component["replaced"] is None:  # manifests without a replacement read as they always did
                component.pop("replaced")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        # Keys this version does not know are ignored at every level (a newer sdopt may add some);
        # the schema has already checked the types of those it knows.
        data = dict(data)
        comps = {
            name: ComponentEntry(
                **{**_known(ComponentEntry, c), "files": [FileEntry(**_known(FileEntry, f)) for f in c.get("files", [])]}
            )
            for name, c in data.pop("components").items()
        }
        return cls(components=comps, **_known(cls, data))

    def write(self, folder: str | Path, stamp: bool = True) -> Path:
        """Validate and write sdopt.json; ``stamp=False`` leaves out the creation time
        (the zoo's checkpoints must be byte-identical for the same seed)."""
        from sdopt import __version__

        self.sdopt_version = self.sdopt_version or __version__
        if stamp and not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        data = self.to_dict()
        validate(data, where="the manifest about to be written")
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        return path

    # --- identity -------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        # vae_decoder and vae_encoder may share files (a Diffusers vae/ folder): count each file once.
        return sum({f.path: f.size_bytes for c in self.components.values() for f in c.files}.values())

    @property
    def pipeline_family(self):
        """The sdopt.families.Family this artifact belongs to (what its loop and exporters ask)."""
        from sdopt.families import get_family

        return get_family(self.family)

    def component_precision(self, name: str, precision: str) -> str:
        """The precision component ``name`` runs in when this artifact runs in ``precision``: fp32 for the VAE
        of a family that upcasts it under fp16 (SDXL: Family.upcasts_vae) unless the VAE says force_upcast
        false, ``precision`` for everything else (a tiny decoder in the VAE's place included: it is fp16-safe)."""
        entry = self.components.get(name)
        upcast = (precision == "fp16" and name.startswith("vae_") and self.pipeline_family.upcasts_vae
                  and self.model.get("vae_force_upcast", True) and not (entry and entry.replaced))
        return "fp32" if upcast else precision

    @property
    def artifact_id(self) -> str:
        """A short id that changes whenever any component file changes."""
        return fingerprint_of(self.components)[:12]

    def verify_files(self, folder: str | Path) -> None:
        """Check that every listed file exists and matches its recorded sha256 (hashed once while the file stays
        unchanged: sdopt.hash_records), that nothing unlisted is beside them, and that the tokenizer and scheduler
        folders are there.

        A file in a component folder that the manifest does not list would be
        loaded unchecked (a weights file whose entry was removed): refused.
        """
        folder = Path(folder)
        check_support_folders(folder, self)
        listed = {f.path for comp in self.components.values() for f in comp.files}
        for sub in sorted({comp.folder for comp in self.components.values()}):
            for path in sorted((folder / sub).rglob("*")) if (folder / sub).is_dir() else ():
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and rel not in listed:
                    raise SdoptError(
                        f"{path} is in the artifact but not listed in {MANIFEST_NAME}, so it cannot be verified: "
                        "the artifact was changed after export; export it again (or remove that file)"
                    )
        checked: set[str] = set()
        for name, comp in self.components.items():
            for f in comp.files:
                path = folder / f.path
                if not path.is_file():
                    raise SdoptError(f"{path} is listed in {MANIFEST_NAME} for {name} but missing: the artifact is incomplete; export it again")
                if f.sha256 is None or f.path in checked:
                    continue
                if recorded_sha256(path, f.sha256) != f.sha256:  # hashed once while the file is unchanged (sdopt.hash_records)
                    raise SdoptError(
                        f"{path} does not match the sha256 recorded in {MANIFEST_NAME}: the file was changed "
                        "or corrupted after export; export the artifact again"
                    )
                checked.add(f.path)


def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in cls.__dataclass_fields__}


def fingerprint_of(components: dict[str, ComponentEntry]) -> str:
    """sha256 over the sorted (path, sha256) pairs of every component file."""
    return _digest({(f.path, f.sha256 or "") for c in components.values() for f in c.files})


# Keys Diffusers and Transformers stamp into every config they save: which version wrote the file, not what the model is.
VERSION_STAMPS = frozenset({"_diffusers_version", "transformers_version"})


def identity_of(components: dict[str, ComponentEntry], folder: str | Path) -> str | None:
    """fingerprint_of, blind to the library versions that wrote the configs: a config (.json) counts by its content
    without VERSION_STAMPS, every other file by its sha256. The tiny model `sdopt init-model` writes under
    Transformers 5.24 and under 5.25 has two fingerprints (text_encoder/config.json records which wrote it) and one
    identity: the gate compares models by it. None when a file is not here to read, or its hash not recorded (a folder
    without sdopt.json: hashing a checkpoint's gigabytes for a report is not worth it, as for its fingerprint)."""
    pairs = set()
    for comp in components.values():
        for f in comp.files:
            path = Path(folder) / f.path
            if not path.is_file() or f.sha256 is None:
                return None
            pairs.add((f.path, _config_digest(path) if path.suffix == ".json" else f.sha256))
    return _digest(pairs)


def _config_digest(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return sha256_file(path)  # not a config that reads: its bytes are what there is
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in VERSION_STAMPS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _digest(pairs: set[tuple[str, str]]) -> str:
    return hashlib.sha256("\n".join(f"{p}:{h}" for p, h in sorted(pairs)).encode()).hexdigest()


def derive(source: "Manifest", source_folder: Path, folder: Path, components: dict[str, ComponentEntry], **fields: Any) -> "Manifest":
    """The manifest of an artifact made from ``source`` (an export or a quantization) in ``folder``.

    Hashes the new files, records the source checkpoint's path and fingerprint
    (hashing an inferred source's files to get one), and carries its model facts.
    """
    hash_components(components, folder)
    return Manifest(components=components, model=source.model, source=origin_of(source, source_folder), family=source.family, tokenizer=source.tokenizer, **fields)


def origin_of(source: "Manifest", source_folder: Path) -> dict[str, Any]:
    """What an artifact records of the checkpoint it was made from: its path and fingerprint
    (hashing an inferred source's files to get one)."""
    if source.inferred:
        hash_components(source.components, source_folder)
    return {"path": str(Path(source_folder).resolve()), "fingerprint": source.source.get("fingerprint") or fingerprint_of(source.components)}


def hash_components(components: dict[str, ComponentEntry], folder: str | Path) -> None:
    """Fill in missing sha256 values (for a manifest about to be written, or inspect)."""
    cache: dict[str, str] = {}
    for comp in components.values():
        for f in comp.files:
            if f.sha256 is None:
                f.sha256 = cache.get(f.path) or sha256_file(Path(folder) / f.path)
                cache[f.path] = f.sha256


def files_in(folder: Path, root: Path, suffixes: tuple[str, ...]) -> list[FileEntry]:
    """FileEntry for every file below folder whose name ends with one of suffixes."""
    return [
        FileEntry(path=p.relative_to(root).as_posix(), size_bytes=p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name.endswith(suffixes)
    ]


# --- schema ---------------------------------------------------------------------
_SCHEMA: dict[str, Any] | None = None


def schema() -> dict[str, Any]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(resources.files("sdopt.schemas").joinpath("manifest.schema.json").read_text(encoding="utf-8"))
    return _SCHEMA


def validate(data: dict[str, Any], where: str) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        at = "/".join(str(p) for p in err.path) or "(top level)"
        raise SdoptError(f"{where} does not follow the sdopt manifest schema: at {at}: {err.message}")


# --- paths stay inside the artifact ------------------------------------------------
def check_inside(folder: Path, relative: str, what: str) -> None:
    """Refuse a path from a manifest that names anything outside the artifact folder.

    Lexically (absolute, '..', a drive or backslash) and on disk (a symlink that
    resolves outside). A Hugging Face cache snapshot links its files to the
    repository's blobs/ folder beside snapshots/: that repository folder is the
    bound there.
    """
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or "\\" in relative or ".." in pure.parts or (len(relative) > 1 and relative[1] == ":"):
        raise SdoptError(
            f"{folder / MANIFEST_NAME}: {what} {relative!r} is not a path inside the artifact; an artifact may name only "
            "its own files. Do not use this folder: export or download the artifact again"
        )
    root = folder.absolute().resolve()
    bound = root.parent.parent if root.parent.name == "snapshots" else root
    target = (root / relative).resolve()
    if target != bound and bound not in target.parents:
        raise SdoptError(f"{folder / relative} ({what}) links outside the artifact, to {target}: an artifact may name only its own files")


def check_paths(manifest: "Manifest", folder: Path) -> None:
    """Every path the manifest names (component folders and files, tokenizer, scheduler, quantized weights) stays inside folder."""
    check_inside(folder, manifest.tokenizer, "the tokenizer folder")
    check_inside(folder, manifest.scheduler, "the scheduler folder")
    for name, comp in manifest.components.items():
        check_inside(folder, comp.folder, f"{name}'s folder")
        for f in comp.files:
            check_inside(folder, f.path, f"a file of {name}")
        weights = (comp.quantization or {}).get("weights")
        if weights is not None:
            check_inside(folder, str(weights), f"{name}'s quantized weights")


def check_support_folders(folder: Path, manifest: "Manifest") -> None:
    """The tokenizer and scheduler folders the loop reads exist (their files carry no hashes)."""
    tokenizers = [("tokenizer", sub, None) for sub in tokenizer_folders(manifest)]
    for what, sub, needed in (*tokenizers, ("scheduler", manifest.scheduler, "scheduler_config.json")):
        path = folder / sub
        if not path.is_dir() or (needed and not (path / needed).is_file()):
            again = ("export it again" if not manifest.inferred or manifest.backend != "torch"
                     else f"the checkpoint is incomplete: download it again (a Diffusers folder has {sub}/ beside unet/)")
            raise SdoptError(f"{path} is missing: the artifact has no {what}; {again}")
        # The folder itself is checked by check_paths; a file in it linked to one outside (tokenizer.json to /etc/passwd)
        # was read as the tokenizer's: the files the loop reads stay inside the artifact too.
        for file in sorted(path.iterdir()):
            check_inside(folder, f"{sub}/{file.name}", f"a file of the {what}")


# --- reading ----------------------------------------------------------------------
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_ADVICE = ("sdopt reads Diffusers folders, not single files. Convert it where its original config can be read (a network, "
                      "or the config file): diffusers' StableDiffusionPipeline.from_single_file(FILE).save_pretrained(FOLDER) "
                      "(StableDiffusionXLPipeline for SDXL), then give FOLDER")

def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an artifact folder: sdopt.json if present, else inferred from its layout."""
    folder = Path(folder)
    if not folder.exists():
        raise SdoptError(f"{folder} does not exist: give the path of an sdopt artifact or a Diffusers model folder")
    if not folder.is_dir():
        if folder.suffix.lower() in _SINGLE_FILE_SUFFIXES:  # what most Stable Diffusion downloads are (AUTOMATIC1111, ComfyUI)
            raise SdoptError(f"{folder} is a single-file checkpoint (the whole model in one file); {SINGLE_FILE_ADVICE}")
        raise SdoptError(f"{folder} is a file, not an artifact folder: give the folder that holds sdopt.json or model_index.json")
    if (folder / INCOMPLETE_MARKER).exists():
        raise SdoptError(f"{folder} is an unfinished output (the command writing it was interrupted); delete it and run that command again")
    path = folder / MANIFEST_NAME
    if path.is_file():
        data = read_json(path, missing="export the artifact again")
        check_schema_version(data, path)
        validate(data, where=str(path))
        manifest = Manifest.from_dict(data)
    else:
        from sdopt.layouts import infer_manifest

        manifest = infer_manifest(folder)
        # Nothing to verify, but a Diffusers folder without its tokenizer is said incomplete here, before any loading
        # (verify_files checks them for sdopt artifacts; the loader's own refusal said to export it again).
        check_support_folders(folder, manifest)
    check_paths(manifest, folder)
    return manifest


def check_schema_version(data: Any, path: Path) -> None:
    """A manifest of a later schema was written by a newer sdopt: say so and what to do (the schema's own refusal said
    only "1 was expected")."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        from sdopt import __version__

        written = data.get("sdopt_version")
        raise SdoptError(
            f"{path} is manifest schema {version}, written by "
            f"{f'sdopt {written}' if isinstance(written, str) and written else 'a newer sdopt'}; this sdopt ({__version__}) "
            f"reads schema {SCHEMA_VERSION} only: upgrade sdopt (pip install -U sdopt) to load it, or export the artifact again with this one"
        )


def pipeline_class(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    index_data = read_json(index)
    return index_data.get("_class_name") if isinstance(index_data, dict) else None


def tokenizer_folders(manifest: "Manifest") -> list[str]:
    """The artifact's tokenizer folders: ``manifest.tokenizer``, then the family's others (SDXL's tokenizer_2)."""
    return [manifest.tokenizer, *manifest.pipeline_family.tokenizers[1:]]


def folder_family(folder: Path) -> str:
    """The family of a folder from its model_index.json (refused with the families sdopt runs when unknown)."""
    from sdopt.families import family_of_class

    return family_of_class(pipeline_class(folder), folder).name


# VAE config keys that change how latents are scaled (Diffusers: (latents - mean) * scaling_factor / std, or
# (latents - shift_factor) * scaling_factor), which the loop does not do.
_LATENT_NORMALISATION = ("latents_mean", "latents_std", "shift_factor")


def model_info(unet_config: dict[str, Any], vae_config: dict[str, Any], text_max_length: int = 77, index: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``model`` section from Diffusers' UNet and VAE config.json contents (and model_index.json's)."""
    for key in _LATENT_NORMALISATION:
        if vae_config.get(key) is not None:
            raise SdoptError(
                f"this model's VAE config sets {key}: its latents are shifted or normalised per channel before the UNet "
                "sees them (Playground v2.5, SD3-class VAEs), and sdopt's loop scales them by scaling_factor only, so it "
                "would make wrong images without saying so; such VAEs are not supported yet"
            )
    info = {
        "latent_channels": int(vae_config.get("latent_channels", 4)),
        "vae_scale_factor": 2 ** (len(vae_config.get("block_out_channels", [0, 0, 0, 0])) - 1),
        "vae_scaling_factor": float(vae_config.get("scaling_factor", 0.18215)),
        "sample_size": int(unet_config.get("sample_size", 64)),
        "cross_attention_dim": int(unet_config.get("cross_attention_dim", 768)),
        "text_max_length": text_max_length,
    }
    if int(unet_config.get("in_channels", info["latent_channels"])) != info["latent_channels"]:
        info["unet_in_channels"] = int(unet_config["in_channels"])  # an inpainting UNet: latents, mask, masked image
    if unet_config.get("time_cond_proj_dim"):  # a latent consistency model's UNet: the guidance scale is its input (timestep_cond)
        info["time_cond_proj_dim"] = int(unet_config["time_cond_proj_dim"])
    if unet_config.get("addition_embed_type") == "text_time":  # SDXL: a pooled text embedding and six size ids
        from sdopt.families.sdxl import TIME_IDS

        info["time_ids_dim"] = TIME_IDS
        info["text_embeds_dim"] = int(unet_config["projection_class_embeddings_input_dim"]) - TIME_IDS * int(unet_config["addition_time_embed_dim"])
        # Its pipelines run the VAE in float32 under fp16 unless the VAE says it need not (the fp16-fix VAE
        # says force_upcast false); AutoencoderKL's default is true.
        info["vae_force_upcast"] = bool(vae_config.get("force_upcast", True))
    if index and "force_zeros_for_empty_prompt" in index:
        info["force_zeros_for_empty_prompt"] = bool(index["force_zeros_for_empty_prompt"])
    return info
