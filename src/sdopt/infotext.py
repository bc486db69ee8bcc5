"""An image's generation parameters as AUTOMATIC1111 writes them into its PNGs (the "parameters" text), and read back.

Every image sdopt makes carries them (``image.info["parameters"]``, written as a PNG text chunk by ``sdopt
generate`` and by every API of ``sdopt serve``, and into a JPEG's or WebP's EXIF UserComment by ``sdopt generate -o
x.jpg``, as AUTOMATIC1111 does), so a picture says how it was made: the prompt, the negative prompt, then one line
of ``Key: value`` pairs::

    a lighthouse at dawn
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Emphasis: None, Model hash: 3f2a9c1b0d, Model: sd15, Backend: openvino bf16, Version: sdopt 0.1.0

AUTOMATIC1111's PNG Info tab, SD.Next, image browsers and ``/sdapi/v1/png-info`` read it; a txt2img request whose
``infotext`` is such a text takes its values for every field it does not set itself (AUTOMATIC1111's rule), so an
image can be made again. sdopt's own levers use keys of their own (``Cache interval``, ``Guidance end``).
An image of a batch drawn from one seed (``sdopt generate --num-images 2``) is made again only with its batch:
``Batch size`` and ``Batch pos`` say so, as AUTOMATIC1111 writes them (where they only say where an image was, its
``Seed`` being the image's own: one_seed_batch).

Standard library only: ``import sdopt`` stays lean.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdopt.os_text import readable

KEY = "parameters"  # the PNG text chunk's key, AUTOMATIC1111's
NEGATIVE = "Negative prompt: "
# AUTOMATIC1111's modules/infotext_utils.py: a key, a colon, a value that is either JSON-quoted or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _quote(value: Any) -> str:
    """A value as AUTOMATIC1111 writes it: JSON-quoted when it holds a comma, a colon or a line break."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n\"") else text


def _stem(path: str) -> str:
    from pathlib import Path

    return readable(Path(path).stem)  # "Loras" names the file: PNG text (readable)


def _number(value: float) -> str:
    return f"{value:g}"


def format_parameters(prompt: str, negative_prompt: str | None, pairs: dict[str, Any]) -> str:
    """The text: the prompt, the negative prompt's line when there is one, the pairs whose value is not None."""
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    return "\n".join([prompt, *([NEGATIVE + negative_prompt] if negative_prompt else []), line])


def with_pairs(text: str, extra: dict[str, Any]) -> str:
    """Parameters with ``extra`` pairs set (added at the end, or replacing the same keys; None values are dropped): what
    a server adds to the loop's text for what it did around the loop (a hires pass, AUTOMATIC1111's inpainting area)."""
    parsed = parse_parameters(text)
    pairs = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt", "Size-1", "Size-2")}
    size = {"Size": f"{parsed['Size-1']}x{parsed['Size-2']}"} if "Size-1" in parsed else {}
    return format_parameters(parsed["Prompt"], parsed["Negative prompt"] or None, {**size, **pairs, **extra})


def parse_parameters(text: str) -> dict[str, Any]:
    """AUTOMATIC1111's parse_generation_parameters for what sdopt reads: {"Prompt", "Negative prompt", each key of the
    last line (its values as strings, quotes removed), "Size-1"/"Size-2" for the width and height}."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    found = _PAIR.findall(last)
    if len(found) < 3:  # no parameter line: all of it is the prompt
        found = []
    else:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative, line = True, line[len(NEGATIVE):]
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in found:
        value = value.strip()
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = _SIZE.match(value) if key == "Size" else None
        if size:
            out["Size-1"], out["Size-2"] = size.group(1), size.group(2)
        else:
            out[key] = value
    return out


# Keys of the parameters -> the GenerateRequest field each fills, and its type ("Sampler" and "Schedule type" make
# its scheduler; "Batch size" its num_images, the images one seed drew together).
FIELDS: dict[str, tuple[str, type]] = {
    "Prompt": ("prompt", str), "Negative prompt": ("negative_prompt", str), "Steps": ("steps", int),
    "CFG scale": ("guidance_scale", float), "Seed": ("seed", int), "Size-1": ("width", int), "Size-2": ("height", int),
    "Denoising strength": ("strength", float), "Eta": ("eta", float), "Cache interval": ("cache_interval", int),
    "Guidance end": ("guidance_end", float), "Batch size": ("num_images", int), "Clip skip": ("clip_skip", int),
}
# GenerateRequest.masked_content in AUTOMATIC1111's words for its inpainting_fill 2 and 3 ("original" is not written).
MASKED_CONTENT = {"noise": "latent noise", "zeros": "latent nothing"}
EMPHASIS = "Emphasis"  # AUTOMATIC1111's key; "Original" its default mode (sdopt.runtime.emphasis), which it does not write
# AUTOMATIC1111's mode with no emphasis ("treat (:1.1) as literal characters"): sdopt's prompt_emphasis=False, written
# so, since AUTOMATIC1111 reads a missing key as its default, "Original" (an sdopt image it remade came out otherwise)
NO_EMPHASIS = "None"


# Keys that describe the image without changing what a request makes (the rest of a parameter line would change it).
TI_HASHES = "TI hashes"  # AUTOMATIC1111's: the textual inversion embeddings used, "word: first 12 hex digits of the file's sha256"
DESCRIPTIVE = {"Prompt", "Negative prompt", "Sampler", "Schedule type", "Scheduler", "Model", "Model hash", "Backend", "Version",
               "Batch pos", "Size-1", "Size-2", "Masked content",  # read by request_fields
               TI_HASHES}  # the embeddings a prompt used: the words are in the prompt, the files a run's own (missing_embeddings)


def _unapplied_emphasis(parsed: dict[str, Any]) -> bool:
    return EMPHASIS in parsed and parsed[EMPHASIS] not in ("Original", NO_EMPHASIS)  # AUTOMATIC1111's "No norm" and others


def _unapplied_schedule(parsed: dict[str, Any]) -> bool:
    """A schedule type (or a combined sampler name, "LMS Karras") that sdopt's sampler of that name does not have."""
    if not parsed.get("Sampler"):
        return False
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import unapplied_schedule

    try:
        return unapplied_schedule(parsed["Sampler"], parsed.get("Schedule type")) is not None
    except SdoptError:  # a sampler sdopt does not have: request_fields says so
        return False


def unapplied(parsed: dict[str, Any]) -> list[str]:
    """The keys of parsed parameters that would change the image but that a request made from them does not take
    (AUTOMATIC1111's "Hires upscale", "Variation seed", "RNG", a schedule type sdopt's sampler lacks; sdopt's "Loras",
    whose files it cannot know)."""
    out = [key for key in parsed if key not in FIELDS and key not in DESCRIPTIVE and (key != EMPHASIS or _unapplied_emphasis(parsed))]
    if _unapplied_schedule(parsed):
        out.append("Schedule type" if parsed.get("Schedule type") else "Sampler")
    return out


def made_by_sdopt(parsed: dict[str, Any]) -> bool:
    return str(parsed.get("Version", "")).startswith("sdopt")


def one_seed_batch(parsed: dict[str, Any]) -> bool:
    """Whether parsed parameters are of an image sdopt drew in a batch from one seed (``sdopt generate --num-images``:
    "Batch size" over 1), which is made again only with its batch. AUTOMATIC1111 writes "Batch size" and "Batch pos"
    too, but its "Seed" is the image's own, drawn for it alone: that seed alone asks for the image again."""
    return made_by_sdopt(parsed) and str(parsed.get("Batch size") or "1").strip() != "1"


def request_fields(parsed: dict[str, Any], given: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """GenerateRequest's fields from parsed parameters (parse_parameters): typed, the sampler as sdopt's scheduler
    name; an SdoptError naming the key (and the field, SdoptError.field) for a value of the wrong type, a Size that is
    not WIDTHxHEIGHT or a sampler sdopt does not have. ``given``: the fields the caller sets itself, not read here (a
    value it overrides is not refused)."""
    from sdopt.errors import SdoptError

    out: dict[str, Any] = {}
    made_by_us = made_by_sdopt(parsed)
    for key, (name, kind) in FIELDS.items():
        value = parsed.get(key)
        if value in (None, "") or name in given:
            continue
        if key == "Batch size" and not made_by_us:  # AUTOMATIC1111's batch: each image has its own Seed (one_seed_batch)
            continue
        try:
            out[name] = kind(value)
        except ValueError:
            raise SdoptError(f"{key}: {value!r} is not {'an integer' if kind is int else 'a number'}", field=name) from None
    if "Size" in parsed and not {"height", "width"} <= set(given):  # parse_parameters reads WIDTHxHEIGHT; this is not
        raise SdoptError(f"Size: {parsed['Size']!r} is not WIDTHxHEIGHT (such as 512x768)", field="height")
    content = {words: ours for ours, words in MASKED_CONTENT.items()}.get(str(parsed.get("Masked content", "")).lower())
    if content:
        out["masked_content"] = content
    if parsed.get("Sampler") and "scheduler" not in given:
        from sdopt.runtime.schedulers import from_a1111

        out["scheduler"] = from_a1111(parsed["Sampler"], parsed.get("Schedule type"))
    # sdopt says "Emphasis: Original" when it read the prompt so; AUTOMATIC1111 always does, and says only other modes.
    if parsed.get(EMPHASIS) == "Original" or (not made_by_us and EMPHASIS not in parsed):
        out["prompt_emphasis"] = True
    return out


def read_png_parameters(path: str, given: frozenset[str] | set[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters an image file carries (parse_parameters) and the request fields they make (request_fields, but
    those in ``given``); an SdoptError naming the file when it carries none or cannot be read, or when they do not
    make a request (its field set)."""
    from sdopt.errors import SdoptError
    from sdopt.input_images import open_image

    image = open_image(path, "--parameters-from")
    text = parameters_text(image)
    if not isinstance(text, str) or not text.strip():
        raise SdoptError(f"--parameters-from {path}: the image carries no generation parameters (the PNGs, JPEGs and "
                         "WebPs sdopt and AUTOMATIC1111 write do)")
    parsed = parse_parameters(text)
    try:
        return parsed, request_fields(parsed, given)
    except SdoptError as exc:
        raise SdoptError(f"--parameters-from {path}: {exc}", field=exc.field) from None


# Where AUTOMATIC1111 writes the text into a JPEG or WebP (modules/images.py, with piexif): the EXIF sub-IFD's
# UserComment, "UNICODE\0" then UTF-16 big-endian. A PNG carries it as a text chunk instead.
_EXIF_IFD = 0x8769  # ExifTags.IFD.Exif
_USER_COMMENT = 0x9286  # ExifTags.Base.UserComment
_UNICODE = b"UNICODE\0"
_JPEG_EXIF_LIMIT = 65_533  # a JPEG's APP1 segment: PIL refuses a longer EXIF ("EXIF data is too long")


def parameters_text(image: Any) -> str | None:
    """The parameters text an image carries: its PNG text chunk, else the EXIF UserComment a JPEG or WebP carries
    them in (AUTOMATIC1111's, and sdopt's: save_options); None when it has neither."""
    text = getattr(image, "info", {}).get(KEY)
    if isinstance(text, str):
        return text
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a damaged EXIF block: the image carries no text anyone can read
        return None
    return _user_comment(raw)


def _user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE:
        # piexif writes big-endian whatever the EXIF's byte order; exiftool writes the EXIF's (little-endian under
        # "II"). Latin text has its zero bytes first in big-endian, so the zeros' side tells which.
        big = body[0::2].count(0) >= body[1::2].count(0)
        return body.decode("utf-16-be" if big else "utf-16-le", errors="replace").rstrip("\0") or None
    return body.decode("utf-8", errors="replace").rstrip("\0") or None  # ASCII, or an undefined code: read as UTF-8


def save_options(image: Any, image_format: str) -> dict[str, Any]:
    """``image.save`` keywords that write its parameters in ``image_format``: a PNG text chunk (png_info), a JPEG's
    or WebP's EXIF UserComment as AUTOMATIC1111 writes it; none for other formats, or when it has none. A text too
    long for a JPEG's EXIF block (64 KB) is left out with a warning."""
    text = getattr(image, "info", {}).get(KEY)
    if not isinstance(text, str):
        return {}
    if image_format == "PNG":
        return {"pnginfo": png_info(image)}
    if image_format not in ("JPEG", "WEBP"):
        return {}
    exif = _parameters_exif(text)
    if image_format == "JPEG" and len(exif) > _JPEG_EXIF_LIMIT:
        import warnings

        warnings.warn(_too_long(text), stacklevel=2)
        return {}
    return {"exif": exif}


def parameters_left_out(image: Any, image_format: str) -> str | None:
    """Why an image saved in ``image_format`` goes without the parameters it has (a text too long for a JPEG's EXIF
    block), for whoever receives the file: None when they go in whole, or it has none."""
    text = getattr(image, "info", {}).get(KEY)
    if image_format != "JPEG" or not isinstance(text, str) or len(_parameters_exif(text)) <= _JPEG_EXIF_LIMIT:
        return None
    return _too_long(text)


def _too_long(text: str) -> str:
    return (f"the image's generation parameters ({len(text):,} characters) do not fit a JPEG's EXIF block: it is saved "
            "without them (a PNG carries them whole)")


def _parameters_exif(text: str) -> bytes:
    """The EXIF block carrying ``text`` as AUTOMATIC1111 writes it: UserComment, "UNICODE\0" then UTF-16 big-endian."""
    return _exif_with_user_comment(_UNICODE + text.encode("utf-16-be"))


def _exif_with_user_comment(comment: bytes) -> bytes:
    """An EXIF block holding one UserComment, typed UNDEFINED as the standard has it. PIL's Exif writes bytes it has
    no type for as BYTE, which piexif (AUTOMATIC1111's reader) reads as a tuple of numbers, not the text."""
    import struct

    # "Exif\0\0", a little-endian TIFF header, IFD0 at 8 with one entry (the Exif sub-IFD, at 26), the sub-IFD with
    # one entry (the comment, at 44), then the comment itself.
    ifd0 = struct.pack("<H HHII I", 1, _EXIF_IFD, 4, 1, 26, 0)
    sub_ifd = struct.pack("<H HHII I", 1, _USER_COMMENT, 7, len(comment), 44, 0)
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd0 + sub_ifd + comment


def png_info(image: Any):
    """The PNG text chunks that carry an image's parameters (``image.info[KEY]``), for ``image.save(..., pnginfo=)``;
    None when it has none. PIL writes no text chunk unless given one."""
    text = getattr(image, "info", {}).get(KEY)
    if not isinstance(text, str):
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(KEY, text)  # an iTXt chunk (UTF-8) where the text is not Latin-1, as AUTOMATIC1111's
    return info


def embedding_hashes(parsed: dict[str, Any]) -> dict[str, str]:
    """{word: short hash} of AUTOMATIC1111's "TI hashes" (the embeddings an image's prompts used)."""
    pairs = (part.rpartition(":") for part in str(parsed.get(TI_HASHES) or "").split(","))
    return {word.strip(): short.strip() for word, sep, short in pairs if sep and word.strip()}


def missing_embeddings(parsed: dict[str, Any], have: list[dict[str, Any]]) -> list[str]:
    """The embeddings an image's parameters say its prompts used that a run with these (Pipeline.embeddings) lacks, or
    has another file of (its short hash differs): the image will differ."""
    hashes = {e["name"].lower(): e["sha256"] for e in have}
    return [word for word, short in embedding_hashes(parsed).items() if not hashes.get(word.lower(), "").startswith(short.lower())]


def loras_in_effect(asked: dict[str, float] | None, fused: dict[str, float] | None = None) -> dict[str, float]:
    """{name: scale} of the LoRAs an image is made with: those fused into the artifact, then the request's (named by
    their files' stems, as "Loras" writes them)."""
    out = {_stem(f): float(w) for f, w in (fused or {}).items()}
    for f, w in (asked or {}).items():
        out[_stem(f)] = out.get(_stem(f), 0.0) + float(w)  # the same LoRA fused and asked again adds up
    return out


# One "name:scale" entry of "Loras", from the start or after ", ": the name may hold ", " and ":" (file names can), the
# scale is a number, and the entry ends where the next ", " or the text does.
_LORA_ENTRY = re.compile(r"(?:^|,)\s*(.+?):([-+]?[0-9][0-9.eE+-]*)\s*(?=,|$)")


def lora_difference(parsed: dict[str, Any], have: dict[str, float]) -> tuple[dict[str, str], dict[str, float]] | None:
    """None when a run with ``have`` (loras_in_effect) has the LoRAs an image's parameters say ("Loras": "name:scale,
    ..."; none when it has no such key), each at its scale; else (the image's, as written: {name: scale text}, and the
    run's) for a warning. An entry that does not read as name:scale counts as one the run lacks."""
    asked: dict[str, str] = {}
    text, at = str(parsed.get("Loras") or ""), 0

    def strays(between: str) -> None:  # what no entry read: entries without a :scale
        asked.update({part.strip(): "?" for part in between.split(",") if part.strip()})

    for entry in _LORA_ENTRY.finditer(text):  # a name may hold ", " (a file "a, b.safetensors"): an entry ends at :NUMBER
        strays(text[at:entry.start()])
        asked[entry.group(1).strip()] = entry.group(2)
        at = entry.end()
    strays(text[at:])
    same = set(asked) == set(have)
    for name, scale in asked.items():
        try:
            same = same and abs(have[name] - float(scale)) < 1e-6
        except (KeyError, ValueError):
            same = False
    return None if same else (asked, have)


def image_parameters(request: Any, index: int, *, sampler: tuple[str, str | None] | None, model: str | None, model_hash: str | None,
                     backend: str, cache_interval: int = 1, guidance_end: float = 1.0, version: str = "",
                     defaults: dict[str, Any] | None = None, eta_used: bool = True, clip_skip: int = 1,
                     embeddings: dict[str, str] | None = None, fused_loras: dict[str, float] | None = None) -> str:
    """The text for image ``index`` of a GenerateRequest's result (prompt-major: prompt index // num_images).
    sampler: (AUTOMATIC1111's sampler name, its schedule type or None); None when no name describes the scheduler
    (a checkpoint's own scheduler that no sdopt name builds alike), said as sdopt's key "Scheduler". defaults: the
    artifact's own cache_interval and guidance_end; a value is written where it is on or differs from them, so that the
    parameters make the same image again on that artifact. eta_used: whether the scheduler read the request's eta.
    clip_skip: the Clip skip the image was made with (1 where the family ignores the request's). embeddings: {word: the
    file's short hash} of the textual inversion embeddings the row's prompt and negative used (AUTOMATIC1111's TI hashes).
    fused_loras: {file name: scale} of the LoRAs fused into the artifact's weights: they made the image as much as the
    request's own, so "Loras" names both (the fused first), whichever way each was applied."""
    row = index // request.num_images
    defaults = defaults or {}
    seeds = request.seeds
    image_to_image = request.image_to_image
    negative = request.negative_prompts[row] if request.negative_prompt is not None else None
    pairs: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler[0] if sampler else None,
        "Schedule type": sampler[1] if sampler else None,
        "Scheduler": None if sampler else "the checkpoint's own",
        "CFG scale": _number(request.guidance_scale),
        "Seed": seeds[index] if seeds else request.seed,
        "Size": f"{request.width}x{request.height}",
        # The rows one seed's noise was drawn for (every prompt's): the image again is at Batch pos of that many
        "Batch size": None if seeds or request.batch_size == 1 else request.batch_size,
        "Batch pos": None if seeds or request.batch_size == 1 else index,
        "Denoising strength": _number(request.strength) if image_to_image else None,
        "Masked content": MASKED_CONTENT.get(request.masked_content) if request.mask_image is not None else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,  # AUTOMATIC1111 writes it only when set
        "Eta": _number(request.eta) if request.eta is not None and eta_used else None,
        "Cache interval": cache_interval if cache_interval > 1 or cache_interval != defaults.get("cache_interval", 1) else None,
        "Guidance end": _number(guidance_end) if request.guidance_scale > 1 and (guidance_end < 1 or guidance_end != defaults.get("guidance_end", 1.0)) else None,
        EMPHASIS: "Original" if request.prompt_emphasis else NO_EMPHASIS,
        "Loras": ", ".join(f"{name}:{_number(w)}" for name, w in loras.items()) if (loras := loras_in_effect(request.loras, fused_loras)) else None,
        TI_HASHES: ", ".join(f"{word}: {short}" for word, short in embeddings.items()) if embeddings else None,
        "Model hash": model_hash,
        "Model": model,
        "Backend": backend,
        "Version": f"sdopt {version}".strip(),
    }
    return format_parameters(request.prompts[row], negative, pairs)
