"""AUTOMATIC1111's listings (``/sdapi/v1``): what this server has, as the clients that list it at start-up read it.

One model (sd-models, options), sdopt's samplers and the schedule types they take, the LoRAs of ``--lora-dir``, the
embeddings of ``--embeddings-dir`` and those fused at export,
the image upscalers the hires fix does (serve/hires.py), and empty lists where sdopt has no such thing (VAEs,
hypernetworks, face restorers, styles, scripts): a client such as webuiapi gets a list, not a 404 it
would read as data. ``POST /sdapi/v1/options`` changes nothing here and says which options it did not apply.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from sdopt.errors import SdoptError, as_json
from sdopt.os_text import readable
from sdopt.runtime.schedulers import A1111_SAMPLERS
from sdopt.serve.errors import RequestError
from sdopt.serve.submission import CLIP_SKIP_SETTING

router = APIRouter(tags=["automatic1111"])
log = logging.getLogger("sdopt.serve")

# AUTOMATIC1111 sampler names -> sdopt scheduler names (sdopt's own names are accepted too).
SAMPLERS = {a1111: ours for ours, (a1111, schedule) in A1111_SAMPLERS.items() if schedule is None}
# Options POST /sdapi/v1/options and a request's override_settings take without a change: the one model, and PNG (what
# every image is); another model or format is refused (check_held_options).
OPTIONS_HELD = {"sd_model_checkpoint", "samples_format", "sd_checkpoint_hash"}


def check_clip_skip(value: Any, field: str) -> int:
    """A Clip skip as AUTOMATIC1111's setting takes it (its slider: 1 to 12), or a 422 naming where it came from."""
    from sdopt.request import MAX_CLIP_SKIP

    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CLIP_SKIP:
        raise RequestError(field, f"{CLIP_SKIP_SETTING}={as_json(value)}: give an integer from 1 (the text encoder's last layer) to {MAX_CLIP_SKIP}")
    return value


def shown_path(folder: str | Path, file: str | Path | None = None) -> str:
    """A folder of the server (and a file in it) as a client is told it: from the folder's own name on, never its
    absolute path, which told anyone who can reach the port the user name, home folder and layout of the machine
    (/home/alice/models/...). AUTOMATIC1111 answers absolute paths; its clients read names and titles."""
    parts = [Path(folder).resolve().name, *([Path(file).name] if file is not None else [])]
    return readable("/".join(part for part in parts if part))


def shown_folders(settings: Any, pipeline: Any) -> dict[str, str]:
    """Each folder the server was given (the artifact, --lora-dir, --embeddings-dir, --image-dir), as given and as
    resolved, -> shown_path's name for it: what a job's error says in place of the absolute path (Worker.shown_folders)."""
    given = [getattr(pipeline, "folder", None), settings.lora_dir, settings.embeddings_dir, settings.image_dir]
    return {str(path): name for folder in given if folder and (name := shown_path(folder))
            for path in {Path(folder).absolute(), Path(folder).resolve()}}


@router.get("/sdapi/v1/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    name = request.app.state.model_name
    folder = getattr(request.app.state.worker.pipeline, "folder", None)
    return [{"title": _title(request), "model_name": name, "hash": _model_hash(request), "sha256": None,
             "filename": shown_path(folder) if folder else readable(name), "config": None}]


def _model_hash(request: Request) -> str | None:
    """What the served images' "Model hash" says (Pipeline.model_hash; a stand-in pipeline in tests has none)."""
    return getattr(request.app.state.worker.pipeline, "model_hash", None)


def _title(request: Request) -> str:
    """The model as AUTOMATIC1111 titles a checkpoint, "NAME [HASH]"."""
    name, short = request.app.state.model_name, _model_hash(request)
    return f"{name} [{short}]" if short else name


@router.get("/sdapi/v1/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs a prompt can name as <lora:NAME:WEIGHT> (sdopt serve --lora-dir), as AUTOMATIC1111 lists them."""
    from sdopt.serve.loras import available

    folder = request.app.state.settings.lora_dir
    return [{"name": name, "alias": name, "path": shown_path(folder, path), "metadata": {}} for name, path in available(folder).items()]


@router.get("/sdapi/v1/samplers")
def samplers() -> list[dict[str, Any]]:
    return [{"name": a1111, "aliases": [ours], "options": {}} for a1111, ours in SAMPLERS.items()]


@router.get("/sdapi/v1/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": None, "need_inner_model": False},
        {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
    ]


@router.get("/sdapi/v1/options")
def get_options(request: Request) -> dict[str, Any]:
    return {"sd_model_checkpoint": _title(request), "samples_format": "png", "sd_checkpoint_hash": _model_hash(request),
            CLIP_SKIP_SETTING: request.app.state.clip_skip}


@router.post("/sdapi/v1/options")
def set_options(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Accepted for clients that set options before generating. CLIP_stop_at_last_layers (Clip skip) is kept, in this
    process, for the requests that do not override it; this server has one model and PNG images; every other option
    (eta_noise_seed_delta, ...) is listed in ``sdopt_ignored``."""
    check_held_options(request, body)
    if CLIP_SKIP_SETTING in body:
        request.app.state.clip_skip = check_clip_skip(body[CLIP_SKIP_SETTING], CLIP_SKIP_SETTING)
    ignored = sorted(set(body) - OPTIONS_HELD - {CLIP_SKIP_SETTING})
    if ignored:
        log.warning("POST /sdapi/v1/options: not applied (sdopt serve has no such options): %s", ", ".join(ignored))
    return {"sdopt_ignored": ignored}


def check_held_options(request: Request, options: dict[str, Any], field: str | None = None) -> None:
    """The served model and PNG pass; another model or samples_format is a 422, alike from POST /sdapi/v1/options and
    from a request's override_settings (``field``: named so, the option otherwise), which AUTOMATIC1111 would apply."""
    name, where = request.app.state.model_name, f"{field}." if field else ""
    wanted = options.get("sd_model_checkpoint")
    if wanted not in (None, name, _title(request), _model_hash(request)):
        # The value as the client's JSON wrote it (true, {"a": 1}), not Python's repr (True, {'a': 1}); another server only
        # for a name
        other = f"; start another `sdopt serve` for {wanted!r}" if isinstance(wanted, str) else ": give its name, a string"
        raise RequestError(field or "sd_model_checkpoint", f"{where}sd_model_checkpoint={as_json(wanted)}: this server serves only {name!r}{other}")
    if (fmt := options.get("samples_format")) is not None and str(fmt).lower() != "png":  # "PNG" too: AUTOMATIC1111 lowercases it
        raise RequestError(field or "samples_format", f"{where}samples_format={as_json(fmt)}: this server answers with PNG images only")


@router.get("/sdapi/v1/scripts")
def scripts() -> dict[str, list]:
    return {"txt2img": [], "img2img": []}


@router.get("/sdapi/v1/upscalers")
def upscalers() -> list[dict[str, Any]]:
    """The image upscalers the hires fix does (its hr_upscaler): resizes, no networks."""
    from sdopt.serve.hires import IMAGE_UPSCALERS

    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4 if name != "None" else None}
            for name in IMAGE_UPSCALERS]


def _none() -> list:
    return []


@router.get("/sdapi/v1/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, str]]:
    """The hires fix's latent upscalers (serve/hires.py), AUTOMATIC1111's six."""
    from sdopt.serve.hires import LATENT_MODES

    return [{"name": name} for name in LATENT_MODES]


# AUTOMATIC1111's other lists: sdopt has none of these.
for _path in ("sd-vae", "sd-modules", "hypernetworks", "face-restorers", "realesrgan-models",
              "prompt-styles", "script-info", "extensions"):
    router.add_api_route(f"/sdapi/v1/{_path}", _none, methods=["GET"], name=_path)


@router.get("/sdapi/v1/embeddings")
def embeddings(request: Request) -> dict[str, dict]:
    """The embeddings prompts may use (sdopt.embeddings: --embeddings-dir, and those fused at export) and those skipped,
    in AUTOMATIC1111's shape; sdopt knows no training step or checkpoint of an embedding (null)."""
    def item(shape: Any, vectors: Any) -> dict[str, Any]:
        return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": shape, "vectors": vectors}

    loaded = getattr(request.app.state.worker.pipeline, "embeddings", None) or []
    skipped = getattr(request.app.state, "embeddings_skipped", None) or {}
    return {"loaded": {e["name"]: item(next(iter(e.get("widths", {}).values()), None), e["vectors"]) for e in loaded},
            "skipped": {word: item(None, None) for word in skipped}}


@router.post("/sdapi/v1/refresh-embeddings")
def refresh_embeddings(request: Request) -> None:
    """Load what was added to --embeddings-dir since (AUTOMATIC1111 re-reads its folder); a file already loaded stays
    as loaded. Waits for a running generate call (the text encoders' tables change between calls only)."""
    folder = request.app.state.settings.embeddings_dir
    if folder is None:
        return
    if not Path(folder).is_dir():
        # Checked here: the loader's own words for a missing path ("give a textual inversion .safetensors file, or a
        # folder of them") are advice to whoever names files, which no HTTP client does, and not what the operator must do.
        log.error("sdopt serve: refresh-embeddings: --embeddings-dir %s is no longer a folder (removed or unmounted since the start)", folder)
        raise RequestError(None, f"the server's embeddings folder ({shown_path(folder)}) is gone: it was removed or unmounted while the server ran; "
                                 "the embeddings it loaded before stay usable: its operator must restore --embeddings-dir", status=500)
    try:
        request.app.state.embeddings_skipped = request.app.state.worker.pipeline.add_embeddings(folder, skip_unfit=True)
    except SdoptError as exc:
        # The request sends nothing: what failed is the server's folder (removed, unreadable), which a 422 blamed on the
        # client. Its operator learns it from the log, with the whole path (the client is told the folder's name).
        log.error("sdopt serve: refresh-embeddings cannot read --embeddings-dir %s: %s", folder, exc)
        raise RequestError(None, f"the server cannot read its embeddings folder ({exc}); the embeddings it loaded before "
                                 "stay usable: its operator must restore --embeddings-dir", status=500) from None


@router.get("/sdapi/v1/cmd-flags")
def cmd_flags(request: Request) -> dict[str, Any]:
    """What AUTOMATIC1111's command line would say about this server (never its credentials)."""
    settings = request.app.state.settings
    return {"api": True, "nowebui": False, "listen": settings.exposed, "port": settings.port,
            "api_auth": None, "ckpt": request.app.state.model_name,
            "lora_dir": shown_path(settings.lora_dir) if settings.lora_dir else None}


@router.get("/sdapi/v1/memory")
def memory() -> dict[str, Any]:
    """The machine's memory (bytes) in AUTOMATIC1111's fields (its own "used" is its process's RSS, and "free" total less
    that; here the machine's: what is available to a new program, and the rest); CUDA memory is not reported here. Where the OS does not
    tell it (Windows has no os.sysconf, macOS no SC_AVPHYS_PAGES: a 500 there) "ram" holds an error, as AUTOMATIC1111's
    own does when it cannot read it. "free" is the memory available to a new program (Linux's MemAvailable, as
    sdopt.hardware reads it): SC_AVPHYS_PAGES is MemFree, which leaves out the page cache the kernel gives back on
    demand, and read a few GB on a machine with most of its memory to spare."""
    from sdopt import hardware

    cuda = {"error": "not reported by sdopt serve"}
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):
        return {"ram": {"error": "not reported by sdopt serve on this platform"}, "cuda": cuda}
    available = hardware.available_bytes()
    free = min(available, total) if available is not None else free
    return {"ram": {"free": free, "used": total - free, "total": total}, "cuda": cuda}


@router.post("/sdapi/v1/refresh-checkpoints")
@router.post("/sdapi/v1/refresh-vae")
@router.post("/sdapi/v1/refresh-loras")
def refresh() -> None:
    """Nothing to refresh: one model, and --lora-dir is read at every request."""
