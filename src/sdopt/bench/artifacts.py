"""What a bench compares: its artifact arguments (PATH[@PRECISION][+compile][+guidance-end=F]) parsed,
resolved and checked to be comparable with the reference."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.bench.settings import BenchSettings, ModelDefaults
from sdopt.errors import SdoptError, command_line
from sdopt.manifest import Manifest, fingerprint_of, identity_of, read_manifest
from sdopt.runtime.backends import RUN_PRECISIONS
from sdopt.source import resolve


@dataclass
class Entry:
    name: str
    path: Path
    manifest: Manifest
    precision: str | None = None  # a torch artifact may run in another precision (e.g. bf16)
    options: dict[str, Any] = field(default_factory=dict)  # load options the argument asked for (compile)
    request: dict[str, Any] = field(default_factory=dict)  # request fields the argument set (guidance_end)


def model_fingerprint(m: Manifest) -> str | None:
    """The fingerprint of the weights this artifact was made from (its own, for a source checkpoint)."""
    if m.source.get("fingerprint"):
        return m.source["fingerprint"]
    if m.backend == "torch" and all(f.sha256 for c in m.components.values() for f in c.files):
        return fingerprint_of(m.components)
    return None


def model_identity(entry: Entry) -> str | None:
    """model_fingerprint, blind to the library versions that wrote the configs (sdopt.manifest.identity_of): from the
    checkpoint's files, the entry's own where it is the source checkpoint, else the source folder its manifest records
    while that still holds the same files. None where they are not here to read."""
    fingerprint = model_fingerprint(entry.manifest)
    if fingerprint is None:
        return None
    if fingerprint == fingerprint_of(entry.manifest.components):
        return identity_of(entry.manifest.components, entry.path)
    source = entry.manifest.source.get("path")
    try:
        manifest = read_manifest(source) if source else None
    except SdoptError:
        return None
    if manifest is None or fingerprint_of(manifest.components) != fingerprint:
        return None
    return identity_of(manifest.components, source)


def parse_artifact_arg(text: str) -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    """PATH[@PRECISION][+compile[=SETTING]][+guidance-end=F]: a torch artifact in another precision (models/sd15@bf16),
    and/or compiled with torch.compile (models/sd15@fp16+compile=max-autotune; sdopt.runtime.compiled); any artifact
    with its requests' guidance truncated (models/sd15-ov+guidance-end=0.5; sdopt.runtime.guidance).
    Returns (path, precision, load options, request fields)."""
    options: dict[str, Any] = {}
    request: dict[str, Any] = {}
    match = re.fullmatch(r"(.+?)\+guidance-end=([^+@]*)", text)
    if match:
        from sdopt.request import GenerateRequest

        try:
            request["guidance_end"] = float(match.group(2))
        except ValueError:
            raise SdoptError(f"{text}: +guidance-end={match.group(2)} is not a number; give the fraction of the steps that run guided, e.g. +guidance-end=0.5") from None
        with command_line(False):  # the artifact argument's +guidance-end, not generate's --guidance-end flag
            GenerateRequest(prompt="", guidance_end=request["guidance_end"]).validate()
        text = match.group(1)
    match = re.fullmatch(r"(.+?)\+compile(?:=([a-z_-]+))?", text)
    if match:
        from sdopt.runtime.compiled import compile_setting

        text, options["compile"] = match.group(1), compile_setting(match.group(2) or True, "cuda")  # the device is checked at load
    match = re.fullmatch(rf"(.+)@({'|'.join(RUN_PRECISIONS)})", text)
    if match:
        return match.group(1), match.group(2), options, request
    other = re.fullmatch(r"(.+)@([A-Za-z0-9_-]+)", text)
    if other and not Path(text).exists() and Path(other.group(1)).exists():  # a folder named x@y is still a folder
        *others, last = (f"@{p}" for p in RUN_PRECISIONS)
        raise SdoptError(f"{text}: @{other.group(2)} is not a precision an artifact runs in; give {', '.join(others)} or {last} "
                         "(quantized weights are an artifact of their own: sdopt quantize)")
    return text, None, options, request


def artifact_label(path: Path, precision: str | None, options: dict[str, Any], request: dict[str, Any] | None = None) -> str:
    """How a bench row names an artifact run: the folder, then what the argument changed. The folder's name as text
    (sdopt.os_text.readable): under LC_ALL=C with PYTHONUTF8=0 a non-ASCII one held undecoded bytes (surrogates), on
    which the report's plot (matplotlib) and its UTF-8 files failed after every artifact had run."""
    from sdopt.os_text import readable

    return (readable(path.name) + (f"@{precision}" if precision else "") + (f"+compile={options['compile']}" if options.get("compile") else "")
            + (f"+guidance-end={request['guidance_end']:g}" if (request or {}).get("guidance_end") is not None else ""))


def collect(artifacts: list[str], reference: str, labels: dict[str, str] | None = None) -> list[Entry]:
    """The reference first, then every artifact, with unique names; refuses incomparable sets. ``labels``: the name
    an argument's row takes (a profile's name for what it built: its reference is "torch-fp32", not the checkpoint's
    folder), else artifact_label's (its folder, and what the argument changed)."""
    entries, names = [], set()
    for text in [reference, *artifacts]:
        path_text, precision, options, request = parse_artifact_arg(text)
        path = resolve(path_text)
        manifest = read_manifest(path)
        name = (labels or {}).get(text) or artifact_label(path, precision, options, request)
        if options and manifest.backend != "torch":
            raise SdoptError(f"{text}: +compile runs torch.compile, on torch artifacts only; {path} is an artifact for {manifest.backend}")
        if any(e.path == path and e.precision == precision and e.options == options and e.request == request for e in entries):
            continue  # the reference given again among the artifacts
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        entries.append(Entry(name, path, manifest, precision, options, request))
    ref = entries[0]
    for e in entries[1:]:
        if e.manifest.family != ref.manifest.family:
            raise SdoptError(f"{e.name} is a {e.manifest.family} model and the reference a {ref.manifest.family}: they cannot be compared")
        keys = ("latent_channels", "vae_scale_factor", "cross_attention_dim")
        diff = [k for k in keys if e.manifest.model.get(k) != ref.manifest.model.get(k)]
        if diff:
            raise SdoptError(
                f"{e.name} and the reference {ref.name} have different shapes ({', '.join(f'{k}: {e.manifest.model.get(k)} vs {ref.manifest.model.get(k)}' for k in diff)}): "
                "give a reference made from the same model"
            )
        a, b = model_fingerprint(e.manifest), model_fingerprint(ref.manifest)
        if a and b and a != b:
            raise SdoptError(
                f"{e.name} was made from other weights than the reference {ref.name} (fingerprints {a[:12]} vs {b[:12]}): "
                "quality against it would mean nothing; give the checkpoint it was exported from as --reference"
            )
    return entries


def check_static_shapes(entries: list[Entry], settings: BenchSettings) -> None:
    for e in entries:
        shapes = e.manifest.static_shapes
        if shapes and (shapes.get("height"), shapes.get("width")) != (settings.height, settings.width):
            raise SdoptError(
                f"{e.name} is built for {shapes.get('height')}x{shapes.get('width')} only; the bench asks for "
                f"{settings.height}x{settings.width}: pass --height {shapes.get('height')} --width {shapes.get('width')}"
            )


def guidance_end_of(entry: Entry) -> float | None:
    """The truncated-guidance fraction an entry's requests run with (its argument's, else the artifact's default); None: off."""
    end = entry.request.get("guidance_end", (entry.manifest.export or {}).get("guidance_end"))
    return None if end is None or end >= 1 else float(end)


def model_defaults(reference: str) -> ModelDefaults:
    """The steps, guidance scale and scheduler a few-step model runs at where a request does not say, as sdopt generate
    and serve run it (sdopt.runtime.request_defaults; the checkpoint's own scheduler): an LCM's 4 steps at 8.5 with its
    LCMScheduler, a Turbo artifact's recorded 1 step unguided. BENCH_DEFAULTS' Euler at 7.5 would time and judge a
    request nobody makes. An ordinary checkpoint gets none: its benches stay comparable with the reports before.
    Steps only where the model has its own (not sdopt's 20, far slower than the bench's 4). Every model's own size
    (BenchSettings.resolve takes it where it is below the bench's default)."""
    from sdopt.runtime.load import checkpoint_scheduler_config
    from sdopt.runtime.request_defaults import SDOPT_STEPS, own_size, request_defaults
    from sdopt.runtime.schedulers import name_of

    folder = resolve(parse_artifact_arg(reference)[0])
    manifest = read_manifest(folder)
    defaults, size = request_defaults(manifest.model, manifest.export), own_size(manifest)
    if defaults.is_sdopts:
        return ModelDefaults(size=size)
    config = checkpoint_scheduler_config(folder, manifest.scheduler)
    # Its sdopt name (recorded in the report, compared by the gate); None, the checkpoint's own, where no name builds it alike.
    own = {"guidance_scale": defaults.guidance_scale, "scheduler": name_of(config)}
    if defaults.steps != SDOPT_STEPS:
        own["steps"] = defaults.steps
    return ModelDefaults(own, defaults.source, str(config.get("_class_name", "PNDMScheduler")), size)  # scheduler_class's default
