"""LoRAs by name in any API's prompt: AUTOMATIC1111's ``<lora:NAME:WEIGHT>`` syntax, from the server's LoRA folder.

``sdopt serve ARTIFACT --lora-dir DIR`` makes every ``DIR/NAME.safetensors``
available by NAME. A prompt's tags are taken out of the text the text encoder
sees and applied to that job (the torch backend loads each file once and sets
scales per request: sdopt.lora.runtime). Names are looked up among the files
the folder lists, never joined onto a path, so a name cannot reach outside it.
Jobs batch together only with the same LoRAs at the same weights.
"""

from __future__ import annotations

from pathlib import Path

from sdopt.os_text import readable
from sdopt.lora import summed_scales, take_network_tags
from sdopt.serve.errors import RequestError


def available(folder: str | Path | None) -> dict[str, Path]:
    """NAME -> file, for every .safetensors file in the server's LoRA folder. NAME is text (sdopt.os_text.readable), as
    a prompt's tag names it: under LC_ALL=C a non-ASCII file name was undecoded bytes that no tag matched and that
    /sdapi/v1/loras failed to answer."""
    if folder is None:
        return {}
    return {readable(p.stem): p for p in sorted(Path(folder).glob("*.safetensors")) if p.is_file()}


def take_loras(prompt: str, folder: str | Path | None, field: str = "prompt") -> tuple[str, dict[str, float] | None]:
    """The prompt without its LoRA tags, and {file: weight} for the job (None when it names none). Other extra-network tags
    (<hypernet:...>) are taken out too, as AUTOMATIC1111 takes them out of the text (AUTOMATIC1111's info names them in
    sdopt_ignored)."""
    prompt, tags, _ = take_network_tags(prompt)
    if not tags:
        return prompt, None
    files = available(folder)
    weights = []
    for name, weight, unet_weight in (tag.groups() for tag in tags):
        if unet_weight:
            raise RequestError(field, f"<lora:{name}:{weight}:{unet_weight}>: separate text-encoder and UNet weights are not supported; give one weight")
        if folder is None:
            raise RequestError(field, f"<lora:{name}>: this server has no LoRA folder (start it with sdopt serve ... --lora-dir DIR)")
        if name not in files:
            raise RequestError(field, f"<lora:{name}>: no {name}.safetensors in this server's LoRA folder; available: {', '.join(files) or 'none'}")
        try:
            scale = float(weight) if weight else 1.0
        except ValueError:
            raise RequestError(field, f"<lora:{name}:{weight}>: the weight must be a number, e.g. <lora:{name}:0.8>") from None
        weights.append((str(files[name]), scale))
    loras = summed_scales(weights)
    for file, scale in loras.items():  # checked here, where the field is known (the loop's check named none: "body")
        if not -10.0 <= scale <= 10.0:
            raise RequestError(field, f"<lora:{readable(Path(file).stem)}>: weight {scale:g} (its tags' sum) is out of range: give -10 to 10 "
                                      "(1 is the LoRA as trained)")
    return prompt, loras
