"""Where a model comes from: a local folder, or a Hugging Face hub id where a network exists.

Both end as a local folder read by the same code. sdopt never downloads on its
own initiative: a hub id is fetched only when the user names one, and offline
(HF_HUB_OFFLINE=1, or no network) the error says to download it elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdopt.errors import SdoptError, exception_line, require

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a text-to-image run needs; pickles and the safety checker's weights are never fetched.
_HUB_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors", "*.onnx", "*/*.onnx*", "tokenizer/*", "tokenizer_2/*", "scheduler/*", "sdopt.json"]


def resolve(model: str | Path) -> Path:
    if not str(model).strip():  # Path("") is the current folder: never what an empty argument meant
        raise SdoptError("the model path is empty: give a model folder (for example one written by `sdopt init-model`) or a hub id like org/name")
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    # org/name where ./org is a local folder is a mistyped local path, not a hub id.
    if _HUB_ID.match(text) and not text.startswith((".", "/")) and not Path(path.parts[0]).exists():
        return _from_hub(text)
    raise SdoptError(f"{model} does not exist: give a model folder (for example one written by `sdopt init-model`) or a hub id like org/name")


def _from_hub(repo_id: str) -> Path:
    hub = require("huggingface_hub", "all")
    try:
        return Path(hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # the hub client raises many types for "offline", "not found", "gated"
        raise SdoptError(
            f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {exception_line(exc)}). "
            "If this machine is offline, download the model where a network exists and pass its local folder"
        ) from exc
