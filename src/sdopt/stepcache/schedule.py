"""Which denoising steps run the whole UNet when caching every ``interval`` steps.

Uniform, as DeepCache's default: steps 0, N, 2N, ... run whole (the first must:
there is nothing cached before it) and refresh the cached feature; the others
run the shallow branch on it.
"""

from __future__ import annotations


def runs_whole(step: int, interval: int) -> bool:
    return interval <= 1 or step % interval == 0


def shallow_count(steps: int, interval: int) -> int:
    """How many of ``steps`` steps run only the shallow branch."""
    return sum(not runs_whole(i, interval) for i in range(steps))
