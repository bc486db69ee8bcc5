"""Reading files: JSON and TOML parsed with one error that names the file and what to do, content hashes, the size of
a folder, and where sdopt's per-user cache folder is. (Writing outputs: sdopt.outputs.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError

_HASH_CHUNK = 8 * 2**20


def user_cache_dir() -> Path:
    """sdopt's per-user cache folder (compiled OpenVINO models, TensorRT timing caches):
    $SDOPT_CACHE_DIR, else $XDG_CACHE_HOME/sdopt, else ~/.cache/sdopt."""
    if os.environ.get("SDOPT_CACHE_DIR"):
        return Path(os.environ["SDOPT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "sdopt"
    try:
        return Path.home() / ".cache" / "sdopt"
    except (RuntimeError, KeyError):  # HOME unset and a user id without a passwd entry: a container run as any uid
        # (Windows: USERPROFILE unset, and no os.getuid to name)
        who = f"user id {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise SdoptError(f"no cache folder: HOME is unset and {who} has no home folder; "
                         "set SDOPT_CACHE_DIR to a writable folder") from None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, what: str = "", missing: str = "the folder is incomplete") -> Any:
    """Parse a JSON file, or raise one SdoptError saying which file and what to do."""
    return _read(Path(path), what, missing, "JSON")


def read_toml(path: str | Path, what: str = "", missing: str = "give the path of an existing file") -> dict[str, Any]:
    """Parse a TOML file, or raise one SdoptError saying which file and what to do."""
    return _read(Path(path), what, missing, "TOML")


def _read(path: Path, what: str, missing: str, kind: str) -> Any:
    import json
    import tomllib

    name = f"{what} {path}" if what else str(path)
    try:
        # JSON and TOML are UTF-8 whatever the locale; a BOM before it (Windows' Notepad, PowerShell's `-Encoding utf8`)
        # is no character of the text: tomllib said "Invalid statement (at line 1, column 1)" of a line that looks right.
        text = path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise SdoptError(f"{name} is missing: {missing}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SdoptError(f"cannot read {name}: {exc}") from exc
    try:
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise SdoptError(f"{name} is not valid {kind} ({exc}){_backslash_hint(kind, str(exc))}") from exc


def _backslash_hint(kind: str, error: str) -> str:
    r"""A Windows path in a TOML double-quoted string ("C:\Users\me\x") is read as escapes: tomllib says only "Invalid
    hex value" (\U) or "Unescaped '\'", which told a Windows user nothing of the fix."""
    if kind == "TOML" and ("Unescaped '\\'" in error or "Invalid hex value" in error):
        return "; a backslash in double quotes starts an escape: write a Windows path in single quotes ('C:\\models\\x') or with '/'"
    return ""


def tree_size(path: str | Path) -> int:
    """Bytes of all regular files below path (or of path itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
