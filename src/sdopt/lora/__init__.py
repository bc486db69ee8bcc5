"""LoRA: low-rank weight deltas users train for a model, fused at export or applied per request.

- ``sdopt export|quantize ... --lora FILE[:SCALE]`` fuses one or more LoRAs into
  the weights before they are exported or quantized (sdopt.lora.fuse); the
  manifest records each file's sha256 and scale (``export.loras``), and
  ``sdopt inspect`` shows them.
- On the torch backend, ``GenerateRequest(loras={FILE: SCALE})`` applies LoRAs
  at run time: each file is loaded once per pipeline as a PEFT adapter, each
  request sets the scales it asks for, and a request without LoRAs runs the
  base weights (sdopt.lora.runtime).

Files are read by Diffusers' own LoRA loaders (the family's: SD or SDXL), so the
formats ``pipe.load_lora_weights`` reads — Diffusers/PEFT and kohya
safetensors — are the formats sdopt reads. Those loaders need PEFT
(``pip install sdopt[lora]``). This module stays free of torch at import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sdopt.errors import SdoptError, in_api_request, on_command_line

# AUTOMATIC1111's LoRA tag in a prompt: <lora:NAME> or <lora:NAME:WEIGHT>, or a second (UNet) weight <lora:NAME:TE:UNET>.
# Never text for the text encoder: sdopt serve applies it from its --lora-dir (serve/loras.py), sdopt generate takes it out.
PROMPT_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::([^:<>]*))?>")
# Any of AUTOMATIC1111's extra-network tags (its extra_networks.re_extra_net): it takes every one out of the prompt's
# text, applying the kinds it has (<hypernet:NAME:W>, an extension's <lyco:...>). sdopt applies LoRAs only: the others
# are taken out and named (other_network_tags), never read as words.
_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


def other_network_tags(text: str) -> list[str]:
    """The extra-network tags in ``text`` that are not LoRAs (<hypernet:style:0.6>), which sdopt does not apply."""
    return [tag.group(0) for tag in _EXTRA_NETWORK_TAG.finditer(text) if tag.group(1) != "lora"]


def take_network_tags(text: str) -> tuple[str, list[re.Match], list[str]]:
    """``text`` without AUTOMATIC1111's extra-network tags, the spaces they leave closed up (the text itself where it has
    none); its LoRA tags (PROMPT_TAG's matches: name, weight, UNet weight); its other tags as written, not applied.
    The one place sdopt serve (serve/loras.py) and sdopt generate take tags out of a prompt."""
    loras, others = list(PROMPT_TAG.finditer(text)), other_network_tags(text)
    if not loras and not others:
        return text, [], []
    kept = _EXTRA_NETWORK_TAG.sub(lambda tag: tag.group(0) if tag.group(1) == "lora" else " ", text)
    return " ".join(PROMPT_TAG.sub(" ", kept).split()), loras, others


@dataclass(frozen=True)
class LoraFile:
    path: Path
    scale: float = 1.0

    @property
    def file_name(self) -> str:
        """The file's name as text (sdopt.os_text.readable): under LC_ALL=C with PYTHONUTF8=0 a non-ASCII name holds the
        bytes the locale could not decode (surrogates), which sdopt.json kept as escapes no other JSON reader decodes
        (jq read 名前.safetensors as six U+FFFD)."""
        from sdopt.os_text import readable

        return readable(self.path.name)

    def record(self) -> dict[str, Any]:
        """What a manifest keeps of a fused LoRA: its file name, content hash and scale."""
        from sdopt.file_reading import sha256_file

        return {"file": self.file_name, "sha256": sha256_file(self.path), "scale": self.scale}


def summed_scales(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{key: scale} from (key, scale) pairs, a key named twice at the sum of its scales: a file fused twice is in the
    weights twice, and two <lora:NAME:W> tags add up (AUTOMATIC1111), so every place that names LoRAs sums alike."""
    scales: dict[str, float] = {}
    for key, scale in pairs:
        scales[key] = scales.get(key, 0.0) + scale
    return scales


def manifest_fields(loras: list[LoraFile]) -> dict[str, Any]:
    """The manifest's record of fused LoRAs (its ``export`` section): each file's name, sha256 and scale."""
    return {"loras": [lora.record() for lora in loras]} if loras else {}


def notes_of(loras: list[LoraFile]) -> list[str]:
    """The manifest note that says LoRAs were fused."""
    if not loras:
        return []
    return ["LoRA fused into the weights: " + ", ".join(f"{l.file_name} at scale {l.scale:g}" for l in loras)]


def _how(mapping: bool) -> str:
    """How the caller gives a LoRA, in its own terms: the flag on the command line; an HTTP client of sdopt serve, a tag
    in its prompt (serve/loras.py); in Python, a request's {FILE: SCALE} (``mapping``) or export's and quantize's
    FILE[:SCALE] strings."""
    if in_api_request():
        return "a <lora:NAME:WEIGHT> tag in the prompt, NAME one of this server's LoRAs: GET /sdapi/v1/loras lists them"
    if on_command_line():
        return "--lora FILE or FILE:SCALE, e.g. --lora style.safetensors:0.8"
    if mapping:
        return "its path and scale, e.g. loras={'style.safetensors': 0.8}"
    return "FILE or FILE:SCALE, e.g. loras=['style.safetensors:0.8']"


def parse_lora(text: str | Path | LoraFile, mapping: bool = False) -> LoraFile:
    """``FILE`` or ``FILE:SCALE`` (scale 1.0 when not given), checked to exist and be safetensors; ``mapping``: an entry
    of a request's {FILE: SCALE}, which its errors show."""
    if isinstance(text, LoraFile):
        lora = text
    else:
        path, scale = str(text), 1.0
        head, sep, tail = path.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:  # a colon in the path itself, or a scale that is not a number
                if not Path(path).expanduser().is_file() and Path(head).expanduser().is_file():
                    raise SdoptError(f"LoRA {text}: the scale {tail!r} is not a number (FILE:SCALE, e.g. {Path(head).name}:0.8)") from None
        lora = LoraFile(Path(path).expanduser(), scale)
    if not lora.path.is_file():
        raise SdoptError(f"LoRA file {lora.path} does not exist: give a .safetensors LoRA ({_how(mapping)})")
    if lora.path.suffix != ".safetensors":
        raise SdoptError(f"LoRA file {lora.path} is not .safetensors: sdopt reads weights from safetensors only, never pickles")
    if lora.path.stat().st_size == 0:  # "cannot be read as safetensors (Unable to load weights ...)" said less
        raise SdoptError(f"LoRA file {lora.path} is empty (0 bytes): an interrupted download or copy? Give the LoRA file again")
    if not -10.0 <= lora.scale <= 10.0:
        raise SdoptError(f"LoRA scale {lora.scale} for {lora.path.name} is out of range: give a scale between -10 and 10 (1.0 is the LoRA as trained)")
    return lora


def parse_loras(items: Any) -> list[LoraFile]:
    """A list of FILE[:SCALE] strings, or a {FILE: SCALE} mapping (a request's form), as LoraFiles."""
    if not items:
        return []
    if isinstance(items, dict):
        return [parse_lora(LoraFile(Path(str(k)).expanduser(), float(v)), mapping=True) for k, v in items.items()]
    return [parse_lora(item) for item in items]
