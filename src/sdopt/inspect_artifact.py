"""What an artifact is, for `sdopt inspect`: a dict for --json and a readable text form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdopt.manifest import fingerprint_of, hash_components, read_manifest
from sdopt.request import MAX_IMAGES, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from sdopt.source import folder_identity, resolve, verify_unless_replaced


def describe(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """What the artifact is; with ``verify`` (the default) its files are checked first, as loading does.

    The sizes shown are the manifest's; verification is what makes them the
    files' own (a truncated file fails its sha256, a missing one its check).
    """
    folder = resolve(path)
    identity = folder_identity(folder)
    manifest = read_manifest(folder)
    if manifest.inferred:
        hash_components(manifest.components, folder)  # nothing recorded: compute so the fingerprint can be shown
        verified = "no sdopt.json: nothing recorded to verify the files against"
    elif verify:
        verify_unless_replaced(manifest, folder, identity, "inspect")
        verified = f"yes: {len({f.path for c in manifest.components.values() for f in c.files})} files match their sha256 in sdopt.json"
    else:
        verified = "no (--no-verify): sizes are as sdopt.json records them"
    data = manifest.to_dict()
    data["verified"] = verified
    data["path"] = str(folder)
    data["artifact_id"] = manifest.artifact_id
    data["size_bytes"] = manifest.size_bytes
    data.setdefault("source", {})
    if not data["source"].get("fingerprint"):
        data["source"]["fingerprint"] = fingerprint_of(manifest.components) if manifest.inferred else None
    for name, comp in manifest.components.items():
        data["components"][name]["size_bytes"] = comp.size_bytes
    from dataclasses import asdict

    from sdopt.runtime.request_defaults import default_size, request_defaults

    data["request_defaults"] = asdict(request_defaults(manifest.model, manifest.export))  # what generate and serve run by default
    data["default_size"] = list(default_size(manifest))  # (height, width): the built shapes, else the size it was trained at
    data["scheduler_config"] = _scheduler_summary(folder / manifest.scheduler / "scheduler_config.json")
    from sdopt.layouts import safety_checker_note

    if note := safety_checker_note(folder):  # of the folder, not recorded: an artifact keeps its source's model_index.json
        data["notes"] = [*(data.get("notes") or []), note]
    return data


def _scheduler_summary(path: Path) -> dict[str, Any] | None:
    """The scheduler the artifact carries and what its UNet predicts (epsilon, v_prediction: an SD 2.x 768 model's),
    which nothing else shown says; None where the file cannot be read."""
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return {"class": config.get("_class_name"), "prediction_type": config.get("prediction_type", "epsilon")}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _origin(src: dict[str, Any]) -> str:
    """Where the weights came from. `sdopt train-shapes` records the zoo name it trains (shapes) with trained=True: its
    weights are this machine's run, not the shipped ones `init-model shapes` installs, and the seed is the training's."""
    if src.get("path"):
        return src["path"]
    if "zoo" not in src:
        return "unknown"
    if src.get("trained"):
        return f"{src['zoo']} model trained by `sdopt train-shapes` (seed {src.get('seed')})"
    return f"zoo model {src['zoo']} (seed {src.get('seed')})"


def _shapes(d: dict[str, Any]) -> str:
    """The sizes and batches the artifact takes: a static one's, a TensorRT artifact's engine profiles, or any."""
    if d.get("static_shapes"):
        return f"static {d['static_shapes']}"
    from sdopt.tensorrt.profiles import describe_ranges, image_ranges

    if ranges := image_ranges(d.get("export"), d.get("model") or {}):
        return f"engines take {describe_ranges(ranges)}"
    return f"dynamic: 1 to {MAX_IMAGES} images a call, height and width multiples of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}"


def format_description(d: dict[str, Any]) -> str:
    lines = [
        f"artifact   {d['path']}",
        f"id         {d['artifact_id']}" + ("   (inferred: no sdopt.json)" if d.get("inferred") else ""),
        f"family     {d['family']}",
        f"backend    {d['backend']}" + (f"  ({', '.join(f'{k} {v}' for k, v in d['backend_versions'].items())})" if d.get("backend_versions") else ""),
        f"precision  {d['precision']}",
    ]
    lines.append(f"shapes     {_shapes(d)}")
    lines.append(f"size       {_mib(d['size_bytes'])}")
    if d.get("verified"):
        lines.append(f"verified   {d['verified']}")
    src = d.get("source") or {}
    lines.append(f"source     {_origin(src)}  fingerprint {str(src.get('fingerprint') or 'unknown')[:16]}")
    if d.get("model"):
        lines.append("model      " + ", ".join(f"{k}={v}" for k, v in d["model"].items()))
    if scheduler := d.get("scheduler_config"):
        lines.append(f"scheduler  {scheduler['class']} (the model's own), prediction_type={scheduler['prediction_type']}")
    from sdopt.embeddings import vectors_text

    for embedding in (d.get("export") or {}).get("embeddings") or []:  # fused at export (sdopt.embeddings)
        lines.append(f"embedding  {embedding['name']} ({vectors_text(embedding['vectors'])}) from {embedding['file']}  sha256 {embedding['sha256'][:16]}")
    for lora in (d.get("export") or {}).get("loras") or []:  # fused at export or quantization (sdopt.lora)
        lines.append(f"lora       {lora['file']} fused at scale {lora['scale']:g}  sha256 {lora['sha256'][:16]}")
    from sdopt.rewrite import recorded

    for name, applied in recorded(d.get("export")).items():
        # A quantizer may have turned one back before quantizing (ONNX Runtime's VAE decoder upsamplers): said so
        undone = (((d.get("components") or {}).get(name) or {}).get("quantization") or {}).get("undone_rewrites") or {}
        lines.append(f"rewritten  {name}: " + ", ".join(f"{rewrite} ×{count}" + (" (undone before quantizing)" if rewrite in undone else "")
                                                       for rewrite, count in applied.items()) + " (exact: the same outputs from fewer operations)")
    export = d.get("export") or {}
    if export.get("tensorrt"):  # engines run only where they were built (sdopt.tensorrt.engines)
        key = export["tensorrt"]
        lines.append(f"engines    TensorRT {key.get('tensorrt_version')} on GPU compute capability {key.get('compute_capability')}: they run only there"
                     + (" (rebuilt from the kept ONNX graphs)" if export.get("rebuilt_from") else ""))
    # Request defaults the artifact carries (levers that change the computation): said, since they shape every image.
    if (export.get("deep_cache") or {}).get("interval", 1) > 1:
        lines.append(f"default    step-feature caching: the whole UNet every {export['deep_cache']['interval']} steps "
                     "(a request's cache_interval overrides; 1 = off)")
    if export.get("guidance_end") is not None and export["guidance_end"] < 1:
        lines.append(f"default    truncated guidance: guided for the first {export['guidance_end']:.0%} of the steps "
                     "(a request's guidance_end overrides; 1 = every step)")
    from sdopt.runtime.request_defaults import RequestDefaults

    defaults = RequestDefaults(**d["request_defaults"])
    if not defaults.is_sdopts:
        lines.append(f"default    request: {defaults.describe()}; a request's steps and guidance override")
    if d.get("default_size"):  # the size to bench and optimize a model at: far from it, a small model draws noise and bf16 drifts
        height, width = d["default_size"]
        why = "the shape it was built for" if d.get("static_shapes") else "the size the model was trained at"
        lines.append(f"default    size {width}x{height} for a request that gives none ({why})")
    lines.append("components")
    for name, c in d["components"].items():
        quant = c.get("quantization")
        q = f"  {quant.get('scheme')} via {quant.get('backend')}" + ("" if quant.get("serialized", True) else " (quantized at load)") if quant else ""
        calibration = (quant or {}).get("calibration") or {}
        if calibration.get("samples"):  # int8-static: what its activation ranges came from
            q += f" (calibrated on {calibration['samples']} samples" + (f"; {calibration['method']}" if calibration.get("method") else "") + ")"
        fix = ((quant or {}).get("overflow_fix") or {}).get("mode")
        if fix:  # int8-static: whether its products can saturate where it is loaded on a CPU without VNNI/AMX (a load warns there)
            weights = {"enable": "7-bit weights", "first-layer": "8-bit weights past the first layer"}.get(fix, "8-bit weights")
            risk = "none can saturate" if fix == "enable" else "they can saturate"
            q += f" (overflow fix {fix}: {weights}; {risk} on a CPU without VNNI/AMX)"
        # bnb nf4: which Linear layers its AVX-512-BF16 CPU kernel cannot take; none (every layer of SD 1.5 size) is not
        # worth a word, where "(0 Linear layer(s) too narrow ...)" read as if something had gone wrong
        if quant and quant.get("portable_layers"):
            q += f" ({len(quant['portable_layers'])} Linear layer(s) too narrow for the AVX-512-BF16 kernel)"
        if c.get("replaced"):  # a tiny decoder in the full one's place
            rep = c["replaced"]
            psnr = (rep.get("quality") or {}).get("psnr_db")
            q += f"  replaced by {rep['by']}" + (f" ({psnr:.1f} dB vs the full decoder)" if psnr is not None else "")
        prec = f"  {c['precision']}" if c.get("precision") else ""
        lines.append(f"  {name:<14} {c['folder'] + '/':<16} {_mib(c['size_bytes']):>14}{prec}{q}")
    if d.get("parity"):
        lines.append("parity at export")
        for name, p in d["parity"].items():
            if p.get("skipped"):  # artifacts exported before --skip-validation measured anyway
                lines.append(f"  {name:<14} skipped (--skip-validation)")
            else:
                verdict = "ok" if p.get("passed") else "FAILED, kept (--skip-validation)" if p.get("accepted") else "FAILED"
                errors = "NaN or inf" if p.get("max_abs") is None else f"max abs {p['max_abs']:.3g}  max rel {p['max_rel']:.3g}"
                judged = f" ({p['judged_as']}'s: it ran {p['judged_as']})" if p.get("judged_as") not in (None, d.get("precision")) else ""
                lines.append(f"  {name:<14} {errors}  tolerance {p.get('tolerance'):.3g}{judged}  {verdict}")
    for note in d.get("notes") or []:
        lines.append(f"note       {note}")
    return "\n".join(lines)
