"""The random numbers of one generate call: drawn on the CPU in float32, whatever the backend.

Two ways to seed a batch, both Diffusers':

- ``request.seed``: one generator draws every tensor for the whole batch (Diffusers
  given one ``torch.Generator``). This is the default, and what every bench row uses.
- ``request.seeds``: one generator per image, and each tensor is drawn row by row,
  row i from generator i (Diffusers given a list of generators: ``randn_tensor``).
  An image's numbers then do not depend on the other rows, so an image is the same
  generated alone or as one row of a batch: a server can batch several users'
  requests into one call and give each the image it would have got alone.

Every draw of the loop goes through ``Noise.randn`` (initial noise, the VAE
posterior sample of img2img, inpainting's extra draw), and ancestral schedulers
get ``Noise.for_scheduler``, so the streams stay in Diffusers' order.
"""

from __future__ import annotations

from typing import Any


class Noise:
    def __init__(self, seed: int, seeds: list[int] | None = None):
        import torch

        self.per_image = seeds is not None
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in (seeds if seeds is not None else [seed])]

    def randn(self, shape: tuple[int, ...]):
        """A float32 standard normal tensor of ``shape``; per image, row i from generator i."""
        import torch

        if not self.per_image:
            return torch.randn(shape, generator=self.generators[0], dtype=torch.float32)
        if shape[0] != len(self.generators):
            raise ValueError(f"{shape[0]} rows to draw with {len(self.generators)} per-image generators")
        row = (1, *shape[1:])
        return torch.cat([torch.randn(row, generator=g, dtype=torch.float32) for g in self.generators])

    @property
    def for_scheduler(self) -> Any:
        """The ``generator`` an ancestral scheduler's step() takes: the one generator, or the list
        (Diffusers' randn_tensor then draws row i from generator i; a list of one is one generator)."""
        return self.generators if self.per_image and len(self.generators) > 1 else self.generators[0]
