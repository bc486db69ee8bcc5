"""The export command around every exporter: check, write atomically, describe."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdopt.errors import SdoptError
from sdopt.export import EXPORTERS, get_exporter
from sdopt.export.spec import ComponentSpec, cached_unet_specs, family_specs
from sdopt.file_reading import read_json
from sdopt.outputs import atomic_output_dir, check_free_space, check_output_dir, local_inputs
from sdopt.rewrite import check_optional_rewrites, unapplied_notes, with_target_defaults
from sdopt.manifest import ComponentEntry, Manifest, derive, read_manifest
from sdopt.request import MAX_STEPS
from sdopt.source import check_not_replaced, folder_identity, resolve, verify_unless_replaced

def carried_folders(manifest: Manifest) -> list[str]:
    """Folders an exported artifact carries over from its source, as Optimum's exports do: the tokenizers and the scheduler."""
    from sdopt.manifest import tokenizer_folders

    return [*tokenizer_folders(manifest), manifest.scheduler]


@dataclass
class ExportedComponents:
    components: dict[str, ComponentEntry]
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend_versions: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # what was applied: opset, optimizations, ...
    notes: list[str] = field(default_factory=list)
    static_shapes: dict[str, int] | None = None
    precision: str | None = None  # when it differs from the requested one (e.g. "mixed")


def write_optimum_model_index(source: Path, out: Path) -> None:
    """Optimum's ONNX and Optimum Intel's OpenVINO exports keep the pipeline's model_index.json, with the VAE split in two."""
    import json

    index = read_json(source / "model_index.json", "the checkpoint's")  # checked before the work (source_checkpoint)
    index.pop("vae", None)
    index.update({"vae_decoder": ["diffusers", "AutoencoderKL"], "vae_encoder": ["diffusers", "AutoencoderKL"]})
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


class ExportSource:
    """What an exporter traces: PyTorch fp32 modules, the spec of each, and the model facts for dummy inputs.

    Modules are built when an exporter takes them and handed over (``take``): the
    source keeps no reference, so a component's weights are freed as soon as the
    exporter is done with it. One large module in memory at a time is what lets
    the full SDXL export (a 10 GB fp32 UNet, 13 GB in all) fit in 24 GiB. Fused
    LoRAs are the exception: Diffusers' loaders fuse into the UNet and text
    encoders together, so those are built together (and still handed over one by one).
    """

    def __init__(self, specs: dict[str, ComponentSpec], model: dict[str, Any], builders: dict[str, Callable[[], Any]], rewrites: bool = True,
                 optional_rewrites: tuple[str, ...] = (), finish: dict[str, Callable[[Any], None]] | None = None):
        self.specs, self.model, self._builders, self._rewrite = specs, model, builders, rewrites
        self._optional = optional_rewrites
        self._finish = finish or {}  # name -> what is done to its module once built, whichever builder built it
        self._built: dict[str, Any] = {}  # modules built together with another, waiting to be taken
        self.rewrites: dict[str, dict[str, int]] = {}  # component -> the exact rewrites applied to it (sdopt.rewrite)

    @property
    def names(self) -> list[str]:
        return [n for n in self.specs if n in self._builders]

    def take(self, name: str) -> Any:
        """``name``'s module; the caller owns it from here (take each name once)."""
        if name not in self._built:
            self._built.update(self._builders[name]())
        module = self._built.pop(name)
        if name in self._finish:
            self._finish[name](module)
        if self._rewrite:
            from sdopt.rewrite import apply_rewrites

            if applied := apply_rewrites(name, module, self._optional):
                self.rewrites[name] = applied
        return module


def _text_layers(source: Path, manifest: Manifest, names: tuple[str, ...]) -> dict[str, int]:
    """Each text encoder's layer count, from its config (no weights loaded)."""
    return {name: int(json_config(source / manifest.components[name].folder)["num_hidden_layers"]) for name in names if name in manifest.components}


def prepare_source(source: Path, manifest: Manifest, options: dict[str, Any]) -> ExportSource:
    """The source's modules as an exporter traces them. ``loras``: LoRAs fused into the weights first
    (sdopt.lora); ``embeddings``: textual inversion embeddings appended to the text encoders' token tables
    (sdopt.embeddings; checked to fit in ``export``); ``vae_decoder``: a tiny decoder in the full one's place (checked to fit in ``export``);
    ``deep_cache``: the UNet split in two graphs (sdopt.stepcache); ``no_rewrites``: the modules traced
    without sdopt.rewrite's exact rewrites; ``rewrite``: optional rewrites to apply too (by name)."""
    import torch

    from sdopt.runtime.torch import load_module, load_modules

    family = manifest.pipeline_family
    model = dict(manifest.model)
    specs = family_specs(family, _text_layers(source, manifest, family.text_encoders), model)
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        name: (lambda name=name: {name: load_module(source, manifest, name, torch.float32)}) for name in manifest.components
    }
    if options.get("loras"):
        from sdopt.lora.apply import fuse

        def fused() -> dict[str, Any]:
            modules = {n: m for n, m in load_modules(source, manifest, torch.float32).items() if n in ("unet", *family.text_encoders)}
            fuse(modules, family, options["loras"])
            return modules

        for name in ("unet", *family.text_encoders):
            if name in builders:
                builders[name] = fused
    finish: dict[str, Callable[[Any], None]] = {}
    if options.get("embeddings"):
        from sdopt.embeddings.tables import grow

        for name in family.text_encoders:
            finish[name] = lambda module, name=name: grow(module, name, options["embeddings"])
    if options.get("vae_decoder"):
        from sdopt.decoder.tiny import input_scale, load_tiny_decoder, read_config

        path = Path(options["vae_decoder"])
        builders["vae_decoder"] = lambda: {"vae_decoder": load_tiny_decoder(path, input_scale(read_config(path), manifest.model))}
    if options.get("deep_cache") and "unet" in builders:
        from sdopt.stepcache.unet import split

        family.refuse("deep_cache", "--deep-cache")
        model["deep_feature_channels"] = int(json_config(source / manifest.components["unet"].folder)["block_out_channels"][1])  # what enters the last up block
        whole = builders["unet"]

        def halves() -> dict[str, Any]:
            built = whole()  # the UNet, and with fused LoRAs the text encoders too
            built["unet"], built["unet_shallow"] = split(built["unet"])
            return built

        # Every name the whole UNet's builder served (with fused LoRAs, the text encoders too) gets the split one: built
        # first by a text encoder, the UNet would be waiting unsplit.
        for name in [n for n, build in builders.items() if build is whole] + ["unet_shallow"]:
            builders[name] = halves
        specs.update(cached_unet_specs(specs["unet"]))
    return ExportSource(specs, model, builders, rewrites=not options.get("no_rewrites"), optional_rewrites=tuple(options.get("rewrite") or ()),
                        finish=finish)


def json_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json", "the checkpoint's")


def component_config(source: Path, folder: str, name: str, options: dict[str, Any]) -> Path:
    """The config.json an exported component carries: its source folder's, or the tiny decoder's."""
    if name == "vae_decoder" and options.get("vae_decoder"):
        return Path(options["vae_decoder"]) / "config.json"
    return source / folder / "config.json"


def _replace_decoder(path: str | Path, source: Path, manifest: Manifest) -> tuple[dict[str, Any], list[str]]:
    """Check that --vae-decoder fits the model, measure it against the full decoder; its manifest record and note."""
    from sdopt.decoder import probe
    import warnings

    from sdopt.decoder.tiny import check_fits, distilled_elsewhere, input_scale, load_tiny_decoder, read_config, replacement_record
    from sdopt.runtime.torch import load_pretrained

    config = read_config(path)
    check_fits(config, manifest.model, f"--vae-decoder {path}")
    if "vae_decoder" not in manifest.components:
        raise SdoptError(f"{source} has no VAE decoder for --vae-decoder to replace")
    if warning := distilled_elsewhere(path, manifest, source):
        warnings.warn(warning, UserWarning, stacklevel=2)
    full = load_pretrained("vae_decoder", source / manifest.components["vae_decoder"].folder)
    tiny = load_tiny_decoder(path, input_scale(config, manifest.model))
    quality = probe.measure(full, tiny, manifest.model)
    record = replacement_record(path, config, manifest.model, quality)
    record["parameters"] = sum(p.numel() for p in tiny.tiny.decoder.parameters())  # what decodes (the encoder half is unused)
    note = (f"vae_decoder replaced by an {record['by']} ({record['parameters']:,} parameters) from {path}: "
            f"{quality['psnr_db']:.1f} dB mean PSNR against the full decoder on the probe ({quality['images']} pictures, {quality['size']}); "
            "it changes what is computed, so judge it by what the images show (adherence), not by parity")
    return record, [note]


def mark_replaced_decoder(out: Path) -> None:
    """model_index.json names the class that now decodes (Optimum's loaders read it)."""
    import json

    path = out / "model_index.json"
    if path.is_file():
        index = json.loads(path.read_text(encoding="utf-8"))
        index["vae_decoder"] = ["diffusers", "AutoencoderTiny"]
        path.write_text(json.dumps(index, indent=2) + "\n")


def source_checkpoint(model: str | Path, verb: str = "export") -> tuple[Path, Manifest]:
    """A source for export or quantization (or ``verb``: distill) must be a full-precision PyTorch checkpoint."""
    folder = resolve(model)
    identity = folder_identity(folder)
    manifest = read_manifest(folder)
    if manifest.backend != "torch" or any(c.quantization for c in manifest.components.values()):
        raise SdoptError(
            f"{folder} is an artifact for {manifest.backend}{' with quantized weights' if manifest.backend == 'torch' else ''}; "
            f"{verb} from the original PyTorch (Diffusers) checkpoint"
        )
    if not manifest.inferred:
        verify_unless_replaced(manifest, folder, identity, verb)
    if (folder / "model_index.json").is_file():  # the exports copy it at the end: a damaged one is said before the work
        read_json(folder / "model_index.json", "the checkpoint's")
    return folder, manifest


def export(model: str | Path, target: str, out: str | Path, precision: str = "fp32", force: bool = False,
           loras: list | None = None, progress: bool = True, default_steps: int | None = None,
           default_guidance: float | None = None, embeddings: list | None = None, **options: Any) -> Manifest:
    """Export ``model`` to ``target`` at ``out``. loras: FILE[:SCALE] strings (or LoraFiles) fused first;
    embeddings: textual inversion embedding files (or folders of them) fused into the text encoders;
    progress: a bar per component on stderr; default_steps/default_guidance: what a request that does not say
    runs with this artifact (sdopt.runtime.request_defaults; a Turbo model's 1 step unguided)."""
    from sdopt.embeddings import manifest_fields as embedding_fields, notes_of as embedding_notes, parse_embeddings
    from sdopt.embeddings.select import planned_records
    from sdopt.lora import manifest_fields, notes_of, parse_loras
    from sdopt.runtime.request_defaults import record as defaults_record

    exporter = get_exporter(target)
    exporter.check_options(options, EXPORTERS)
    defaults = defaults_record(default_steps, default_guidance)
    if options.get("rebuild"):  # a target's own artifact built again from what it keeps (TensorRT: its ONNX graphs)
        other = sorted(k for k, v in options.items() if v and k != "rebuild")
        if other or loras or embeddings or defaults or precision != "fp32":
            raise SdoptError("--rebuild takes the shapes, precision and options the artifact's manifest records: give only the artifact, --to and -o")
        return exporter.implementation().rebuild(model, out, force=force)
    loras = parse_loras(loras)  # before any slow work: each file exists and is safetensors
    embeddings = parse_embeddings(embeddings)
    if precision not in exporter.precisions:
        raise SdoptError(f"--to {target} supports precisions {', '.join(exporter.precisions)}, not {precision}")
    check_output_dir(out, force, local_inputs(model))  # before any slow work
    interval = options.get("deep_cache")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_STEPS):
        # the artifact's default must be an interval a request may give (its images' "Cache interval" is read back as one)
        raise SdoptError(f"--deep-cache {interval}: give the caching interval, an integer from 1 to {MAX_STEPS} (2 or 3 are usual)")
    check_optional_rewrites(options.get("rewrite") or (), bool(options.get("no_rewrites")), target)
    options = {**options, "rewrite": with_target_defaults(target, options.get("rewrite") or (), bool(options.get("no_rewrites")))}
    source = resolve(model)
    read_from = folder_identity(source)  # checked at the end: replaced meanwhile, the export would mix two models
    source, source_manifest = source_checkpoint(source)
    # The source's weights again, or half of them below fp32 (fp16, bf16; int8 engines beside their graphs)
    check_free_space(out, int(source_manifest.size_bytes * (1.0 if precision == "fp32" else 0.5)), f"this {target} export")
    impl = exporter.implementation()
    if hasattr(impl, "preflight"):  # what a target needs of this machine (a GPU), asked before any slow work
        impl.preflight(options, precision)
    replaced, replace_notes = _replace_decoder(options["vae_decoder"], source, source_manifest) if options.get("vae_decoder") else (None, [])
    if embeddings:
        from sdopt.manifest import tokenizer_folders
        from sdopt.runtime.load import load_tokenizer

        configs = {n: json_config(source / source_manifest.components[n].folder) for n in source_manifest.pipeline_family.text_encoders}
        embeddings, fused = planned_records(embeddings, configs, load_tokenizer(source / tokenizer_folders(source_manifest)[0]))
    else:
        fused = []

    with atomic_output_dir(out, force=force, inputs=(source,)) as tmp:
        result: ExportedComponents = impl.export_components(source, source_manifest, tmp, precision,
                                                               {**options, "loras": loras, "embeddings": embeddings, "progress": progress})
        for name in carried_folders(source_manifest):
            shutil.copytree(source / name, tmp / name)
        if replaced:
            result.components["vae_decoder"].replaced = replaced
            result.notes = [*result.notes, *replace_notes]
            mark_replaced_decoder(tmp)
        manifest = derive(
            source_manifest, source, tmp, result.components,
            backend=exporter.backend,
            precision=result.precision or precision,
            backend_versions=result.backend_versions,
            static_shapes=result.static_shapes,
            parity=result.parity,
            export={"target": target, **result.export, **({"deep_cache": {"interval": interval}} if interval else {}), **manifest_fields(loras),
                    **embedding_fields(fused), **defaults},
            notes=[*result.notes, *unapplied_notes(options["rewrite"], result.export.get("rewrites") or {}, result.components),
                   *notes_of(loras), *embedding_notes(fused)],
        )
        manifest.write(tmp)
        check_not_replaced(source, read_from, "export")
    return manifest
