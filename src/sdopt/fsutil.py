"""File-system helpers: atomic output folders and content hashes.

Every command that writes an artifact writes it into a hidden temporary
sibling folder and renames it into place only when complete, so an export
that fails or is killed leaves nothing that looks like an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sdopt.errors import SdoptError

_HASH_CHUNK = 8 * 2**20
INCOMPLETE_MARKER = ".sdopt-incomplete"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_size(path: str | Path) -> int:
    """Bytes of all regular files below path (or of path itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_output_dir(out: str | Path, force: bool = False) -> Path:
    """Fail early, before any work, when out cannot be written as asked."""
    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise SdoptError(f"{out} already exists: choose another output path, or pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise SdoptError(f"cannot write {out}: {parent} is not a folder")
    probe = parent
    while not probe.exists():  # the nearest existing ancestor decides whether we may create folders
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SdoptError(f"cannot write {out}: {probe} is not writable; choose an output path you can write to")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on failure it is removed."""
    out = check_output_dir(out, force).absolute()
    # A sibling, so the final rename stays on one filesystem and is atomic. os.mkdir rather
    # than mkdtemp: mkdtemp's 0700 mode would end up on the finished artifact.
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
    except OSError as exc:  # read-only file systems, /proc, permissions os.access cannot see
        raise SdoptError(f"cannot write {out}: {exc.strerror}; choose an output path you can write to") from exc
    # A process killed outright (SIGKILL) cannot clean up; this marker makes sure that what it
    # leaves is never read as an artifact (manifest.read_manifest refuses it).
    (tmp / INCOMPLETE_MARKER).write_text("an sdopt command was writing this folder and did not finish\n")
    try:
        yield tmp
        (tmp / INCOMPLETE_MARKER).unlink()
        _apply_umask(tmp)
        check_output_dir(out, force)  # someone may have created it while we wrote
    except BaseException:
        # Also on KeyboardInterrupt: a half-written folder must never look like an artifact.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        # --force: move the old folder aside first, so a crash here never loses both.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _apply_umask(folder: Path) -> None:
    """Give every file the mode a plain open() would have.

    safetensors and some exporters write their files 0600; an artifact is meant
    to be shared like any other file. The folder's own mode (made by os.mkdir)
    carries the umask.
    """
    file_mode = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(file_mode)
