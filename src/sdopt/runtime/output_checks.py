"""Is a generated output an image at all? One rule for the loop, the CLI and the bench.

Numbers that overflow (a guidance scale of 1e30, a broken export) give NaN
latents, which the VAE turns into an all-black image: saved as a PNG it looks
like a success. Every generate call runs these checks; the result carries what
they found.
"""

from __future__ import annotations

import numpy as np


def broken_output(image: np.ndarray, latents: np.ndarray, decoded: np.ndarray | None = None) -> str | None:
    """Why one output counts as failed (NaN latents, NaN or inf from the VAE decoder, an all-black image), or None."""
    if not np.isfinite(latents).all():
        return "the final latents contain NaN or inf"
    # Sound latents, and a decoder that overflows (an fp16 VAE): its NaN pixels become black ones in the PNG, and only
    # where every pixel is NaN would the image be all black.
    if decoded is not None and not np.isfinite(decoded).all():
        return "the VAE decoder gave NaN or inf pixels (saved, they would be black)"
    if int(image.max()) == 0:
        return "the image is all black"
    return None


def broken_images(images: list, latents: np.ndarray, decoded: np.ndarray | None = None) -> dict[int, str]:
    """Why each broken image of a batch is broken, by its index (PIL images, their final latents and, where known, the
    decoder's float output); empty when all are sound."""
    found = {}
    for i, (image, lat) in enumerate(zip(images, latents)):
        why = broken_output(np.asarray(image), lat, None if decoded is None else decoded[i])
        if why:
            found[i] = why
    return found


def problem_lines(broken: dict[int, str], first: int = 0) -> list[str]:
    """One line per broken image, numbered from ``first`` (a server's job numbers its own images of a shared call)."""
    return [f"image {i - first}: {why}" for i, why in sorted(broken.items())]
