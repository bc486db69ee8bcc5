"""Build the artifacts a hardware profile lists, from one checkpoint, for one bench run.

``sdopt bench --profile NAME --build-from MODEL --work DIR`` calls this, then
benches what it built against the profile's reference. Each ``[[artifacts]]``
entry of the profile is one of:

- the checkpoint itself, optionally in another precision (``backend = "torch"``,
  ``precision``) and compiled (``compile = "max-autotune"``: sdopt.runtime.compiled);
  ``reference = true`` marks the one whose images count as correct;
- an export (``export = "onnx"``, ``precision``, ``options``; ``static = true``
  builds it at the bench's height and width, batch 1);
- a quantization (``quantize = "int8"``, optional ``backend``, ``components`` and the
  quantizer's ``options``, e.g. ``{calibration_images = ["photos/"]}``), of the
  checkpoint or, with ``from = "NAME"``, of an artifact listed before it (an
  OpenVINO export for ``backend = "nncf"``);
- a request lever on the checkpoint or, with ``from = "NAME"``, on an artifact listed before it
  (``guidance_end = 0.5``: truncated guidance, sdopt.runtime.guidance): nothing is built, the
  bench runs that artifact's requests with it (``PATH+guidance-end=0.5``).

An export may replace the VAE decoder by a tiny one (``vae_decoder = PATH``, an
AutoencoderTiny folder, or ``vae_decoder = "distilled"``: one distilled from the
checkpoint by ``sdopt distill-decoder`` into ``WORK/tiny-decoder`` at the bench's
size, with the ``distill = {...}`` table's settings, once for every entry).

Artifacts already under the work folder are reused, as long as what they were
built from is the same: ``WORK/.built/NAME.json`` records each one's entry, the
checkpoint, the size a static one was built for and the artifact a ``from`` entry
started from; an artifact whose record differs (an edited entry, a rebuilt
source, other calibration images) is built again, and said so; so is one made from another
checkpoint than the one now at the model's path (the fingerprint its manifest records). One built before
sdopt kept records is reused as before, and recorded. One that cannot be built here (a missing backend, an unsupported scheme) is
reported and left out; the others are still measured.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdopt.bench.profiles import HardwareProfile
from sdopt.errors import SdoptError
from sdopt.locks import folder_lock
from sdopt.outputs import local_inputs, make_work_dir


@dataclass
class ProfileArtifacts:
    reference: str  # a path, or PATH@precision
    others: list[str] = field(default_factory=list)
    not_built: dict[str, str] = field(default_factory=dict)  # name -> why
    # argument -> the profile's name for it: the bench's rows take these, not the folders' (the reference is the
    # checkpoint itself, whose folder's name differs from machine to machine: sdopt gate would call the reports incomparable)
    names: dict[str, str] = field(default_factory=dict)


BUILT = ".built"  # WORK/.built/NAME.json: what the artifact WORK/NAME was built from


def build_key(spec: dict[str, Any], model: Path, height: int, width: int, device: str, built: dict[str, str]) -> dict[str, Any]:
    """What an artifact is built from: the same key, the same artifact (as JSON reads it back, so a key from disk compares equal)."""
    # A quantized entry's precision is what it runs in (PATH@precision), not how it is built.
    entry = {k: v for k, v in spec.items() if not (k == "precision" and "quantize" in spec)}
    key: dict[str, Any] = {"spec": entry, "model": str(Path(model).absolute()), "device": device}
    if spec.get("static") or spec.get("vae_decoder") == DISTILLED:  # built for the bench's size (the tiny decoder distilled at it)
        key["size"] = [height, width]
    if spec.get("from"):
        from sdopt.bench.artifacts import parse_artifact_arg
        from sdopt.manifest import read_manifest

        source = Path(parse_artifact_arg(_built_source(spec, model, built))[0])
        key["from"] = {"path": str(source), "artifact_id": read_manifest(source).artifact_id}  # a rebuilt source: rebuild this too
    return json.loads(json.dumps(key, default=str))


def _recorded(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# What a build whose component fails the export's parity check can do (the export command's advice, its flag, is none of
# theirs): a profile's entry takes the export's options; sdopt optimize's candidates are its own.
PROFILE_PARITY_ADVICE = "to keep it anyway, set options = { skip_validation = true } in its [[artifacts]] entry"
# Seen: the shapes model (64x64 pictures) at optimize's default 256x256 in bf16, its UNet 0.171 from PyTorch against the
# 0.1 allowed (0.019 at 64x64): bf16's error grows far from a model's own size.
OPTIMIZE_PARITY_ADVICE = ("not kept: try a size nearer the model's own (--height/--width; `sdopt inspect` shows it), "
                          "or --precision fp32")


def build_one(spec: dict[str, Any], model: Path, work: Path, height: int, width: int, device: str, built: dict[str, str],
              say: Callable[[str], None] = lambda line: None, progress: bool = True, reuse_only: str | None = None,
              parity_advice: str = PROFILE_PARITY_ADVICE) -> str:
    """The path (or PATH@precision, PATH+guidance-end=F) that benches one profile artifact, building it if needed
    (again when its build record differs: the module's docstring). ``reuse_only``: build nothing; a candidate that
    would need building is an SdoptError saying this (sdopt optimize past its --budget-minutes: what --work holds is
    still taken, at no cost). ``parity_advice``: what a component past the export's parity tolerance is told to do."""
    if "guidance_end" in spec:
        return f"{_built_source(spec, model, built)}+guidance-end={spec['guidance_end']:g}"
    if "export" not in spec and "quantize" not in spec:
        precision = spec.get("precision", "fp32")
        compiled = f"+compile={spec['compile']}" if spec.get("compile") else ""
        return (str(model) if precision == "fp32" else f"{model}@{precision}") + compiled
    out = work / spec["name"]
    # A quantized torch artifact may run in another precision than its fp32 activations (torchao's: fp16, bf16).
    runs_in = f"@{spec['precision']}" if "quantize" in spec and spec.get("precision", "fp32") != "fp32" else ""
    key, record = build_key(spec, model, height, width, device, built), work / BUILT / f"{spec['name']}.json"
    if (out / "sdopt.json").is_file():
        earlier = _recorded(record)
        # The record names the checkpoint by its path: another model written to that folder since is told by its fingerprint.
        other = _another_checkpoint(_recorded(out / "sdopt.json"), model)
        if earlier is None and not other:  # built before sdopt kept records: reused as it always was, and recorded
            _write_record(record, key)
        if earlier in (None, key) and not other:
            say(f"   reused: {out} was built from this checkpoint with these settings")
            return str(out) + runs_in
        if not reuse_only:  # with nothing to be built, what is there stays
            changed = other or ("its " + ", ".join(k for k in key.keys() | earlier.keys() if key.get(k) != earlier.get(k))
                                + " changed since it was built")
            say(f"   {spec['name']} is built again: {changed}")
            shutil.rmtree(out)
    if reuse_only:
        raise SdoptError(reuse_only)
    if "export" in spec:
        from sdopt.export.run import export

        options = dict(spec.get("options", {}))
        if spec.get("static"):
            options.update(height=height, width=width, batch=1)
        if spec.get("vae_decoder"):
            options["vae_decoder"] = tiny_decoder(spec, model, work, height, width, progress)
        from sdopt.export.parity import ParityFailure

        try:
            export(model, spec["export"], out, precision=spec.get("precision", "fp32"), progress=progress, **options)
        except ParityFailure as exc:
            raise SdoptError(f"{exc.summary}; {parity_advice}") from None
    else:
        from sdopt.quant.run import quantize

        source = Path(_built_source(spec, model, built))
        quantize(source, spec["quantize"], out, backend=spec.get("backend"), device=device, components=spec.get("components"),
                 options=spec.get("options"), progress=progress)
    _write_record(record, key)
    return str(out) + runs_in


def _another_checkpoint(made: dict[str, Any] | None, model: Path) -> str | None:
    """Why what ``made`` describes (an artifact's sdopt.json, a tiny decoder's distill.json) was made from another
    checkpoint than the one now at ``model``, or None. The build record names the checkpoint by its path only, so one
    replaced in place (another model written to the same folder) would be reused against it; the fingerprint the
    artifact records of its checkpoint tells them apart. A checkpoint without recorded hashes (a Diffusers folder
    without sdopt.json) is not hashed for this: it is taken as before."""
    from sdopt.bench.artifacts import model_fingerprint
    from sdopt.manifest import read_manifest

    recorded = ((made or {}).get("source") or {}).get("fingerprint")
    try:
        now = model_fingerprint(read_manifest(model))
    except SdoptError:  # not a folder here (a hub id): what its export resolves, not this check's to refuse
        return None
    if recorded is None or now is None or recorded == now:
        return None
    return f"it was made from another checkpoint at {model} (fingerprint {recorded[:12]}, the checkpoint there now {now[:12]})"


def _write_record(record: Path, key: dict[str, Any]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(key, indent=2) + "\n")


def _built_source(spec: dict[str, Any], model: Path, built: dict[str, str]) -> str:
    """What an entry starts from: the artifact its ``from`` names (built before it), else the checkpoint."""
    if not spec.get("from"):
        return str(model)
    if spec["from"] not in built:
        raise SdoptError(f"{spec['name']} starts from {spec['from']}, which was not built (list it before, and check it built)")
    return built[spec["from"]]


DISTILLED = "distilled"


def tiny_decoder(spec: dict[str, Any], model: Path, work: Path, height: int, width: int, progress: bool = True) -> str:
    """The tiny decoder an entry asks for: its path, or the one distilled from the checkpoint (built once)."""
    if spec["vae_decoder"] != DISTILLED:
        return str(spec["vae_decoder"])
    from sdopt.decoder.distill import DistillSettings, distill_decoder

    out = work / "tiny-decoder"
    asked = {"height": height, "width": width, **spec.get("distill", {})}
    settings = DistillSettings.from_table(spec.get("distill", {}), spec["name"], height=height, width=width)
    done = _recorded(out / "distill.json")
    if done is not None and (any(done.get("settings", {}).get(k) != v for k, v in asked.items()) or _another_checkpoint(done, model)):
        shutil.rmtree(out)  # distilled with other settings (another size, more steps) or from another checkpoint: distilled again
        done = None
    if done is None:
        distill_decoder(model, out, settings, progress=progress)
    return str(out)


def build_profile_artifacts(
    profile: HardwareProfile,
    model: str | Path,
    work: str | Path,
    height: int,
    width: int,
    device: str,
    only: list[str] | None = None,
    say: Callable[[str], None] = lambda line: None,
    progress: bool = True,
    held: contextlib.ExitStack | None = None,
) -> ProfileArtifacts:
    """The profile's artifacts in ``work``, built there or reused. ``held``: where the --work folder's lock goes, held
    as long as the caller keeps it (the bench of what was built: a second command building into the same folder would
    replace an artifact being benched); None: held while building."""
    specs = profile.artifacts
    if only:
        by_name = {s["name"]: s for s in specs}
        unknown = sorted(set(only) - by_name.keys())
        if unknown:
            raise SdoptError(f"--only {', '.join(unknown)}: profile {profile.name} lists {', '.join(by_name)}")
        # The reference always runs; the rest in the order --only names them, once each (which runs first
        # matters under a time limit: a bench cut short still reports what finished). What they are made from
        # (``from``, and its own) is built first, not benched.
        asked = [n for n in dict.fromkeys(only) if not by_name[n].get("reference")]
        order: list[str] = []  # each entry after what it is made from (an asked one too: --only C,B where C is from B)
        for name in asked:
            chain = []
            while name and name in by_name and name not in order and name not in chain:
                chain.append(name)
                name = by_name[name].get("from")
            order += reversed(chain)
        specs = [s for s in specs if s.get("reference")] + [by_name[n] for n in order if not by_name[n].get("reference")]
        benched = asked
    else:
        benched = [s["name"] for s in specs if not s.get("reference")]
    reference = next((s for s in specs if s.get("reference")), None)
    if reference is None:
        raise SdoptError(f"profile {profile.name} marks no artifact as reference = true: add it to one [[artifacts]] entry")
    for spec in specs:  # a tiny decoder's folder that is not there was found when its entry built, after the ones before it
        if spec.get("vae_decoder") not in (None, DISTILLED):
            from sdopt.decoder.tiny import read_config

            read_config(spec["vae_decoder"], flag=f"profile {profile.name}: [[artifacts]] {spec['name']!r}: vae_decoder =")
    model, work = Path(model), make_work_dir(Path(work), local_inputs(model))
    paths: dict[str, str] = {}
    not_built: dict[str, str] = {}
    with contextlib.ExitStack() as own:
        (held or own).enter_context(folder_lock(work, "work", "--work"))
        for spec in specs:
            say(f"== {spec['name']}")
            try:
                paths[spec["name"]] = build_one(spec, model, work, height, width, device, paths, say, progress)
            except SdoptError as exc:
                if spec is reference:
                    raise SdoptError(f"the reference {spec['name']} cannot be built: {exc}") from None
                not_built[spec["name"]] = str(exc)
                say(f"   not built: {exc}")
    names: dict[str, str] = {}
    for name in [reference["name"], *benched]:  # the reference's first: an entry that is the same run is benched once, as it
        if name in paths:
            names.setdefault(paths[name], name)
    return ProfileArtifacts(paths[reference["name"]], [paths[n] for n in benched if n in paths], not_built, names)
