"""Progress bars' status text, drawn as often as the bar itself is.

tqdm's ``set_postfix_str`` redraws the bar on every call, whatever its ``mininterval``: the bench names each image
it measures there, so off a terminal (a CI log, where the command line sets TQDM_MININTERVAL to 30 s) each image
wrote one more copy of the bar, a few a second.
"""

from __future__ import annotations

import time
from typing import Any


def set_status(bar: Any, text: str) -> None:
    """``text`` after the bar's counts, redrawn now only if the bar's ``mininterval`` has passed since it last drew
    (else with its next draw)."""
    bar.set_postfix_str(text, refresh=False)
    if not getattr(bar, "disable", False) and time.time() - getattr(bar, "last_print_t", 0) >= getattr(bar, "mininterval", 0):
        bar.refresh()
