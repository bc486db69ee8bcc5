"""A file's sha256, hashed once while the file stays the same file, unchanged.

Loading an artifact checks every file against the sha256 its manifest records
(Manifest.verify_files). Hashing runs at well under 1 GB/s on a busy CPU core,
so SD 1.5's 4 GB of fp32 weights cost seconds and SDXL's 14 GB tens of seconds
on every `sdopt generate`, every bench worker and every server start. Instead,
as git's index does, a hash is recorded in the user's cache folder with the file's
identity and change stamps (device, inode, size, modification and change time)
and read back while they are all the same. Any write to the file, or its
replacement by another file, changes one of them; the change time cannot be set
back by a user. A file changed within HASH_SETTLE_S of its hashing is never
recorded (git's "racy" rule): a write within the file system's timestamp tick
after the hash could leave the stamps as they were.

The record is a convenience, never a condition: an unreadable, stale or
unwritable record, or one that disagrees with the manifest, means the file is
hashed again, and a load never fails because of one. The records are trusted
as the user's own files: a cache folder others may write (SDOPT_CACHE_DIR on a
shared volume) lets them vouch for a changed file — keep it private.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from sdopt.errors import SdoptError
from sdopt.file_reading import sha256_file, user_cache_dir

HASH_SETTLE_S = 2.0  # a file changed more recently than this before its hash started is not recorded
RECORDS = "verified-hashes"  # the folder under the user's cache folder
PRUNE_EVERY_S = 24 * 3600  # records of files that are gone are removed at most this often (a write starts it)
PRUNED = ".pruned"  # in the records' folder: its modification time is the last pruning's


def _stamps(stat: os.stat_result) -> list[int]:
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _record_path(path: Path) -> Path:
    # The path's bytes on disk: str(path).encode() failed on a name the locale cannot decode (any non-ASCII one under
    # LC_ALL=C with PYTHONUTF8=0), a traceback on every load of an artifact there. Under a UTF-8 locale: the same bytes.
    return user_cache_dir() / RECORDS / (hashlib.sha256(os.fsencode(path)).hexdigest()[:40] + ".json")


def recorded_sha256(path: str | Path, expected: str | None = None) -> str:
    """The sha256 of the file at ``path``: its record's while the file's stamps are the recorded ones, else hashed
    now (and recorded when the file had settled before the hash and did not change during it). A record that
    disagrees with ``expected`` is not believed: the file is hashed again, so a damaged record never fails a load."""
    path = Path(path).resolve()
    stamps = _stamps(path.stat())
    try:
        record_path = _record_path(path)
    except SdoptError:  # no cache folder at all (no HOME, no passwd entry): hashed at every load, never a failed load
        return sha256_file(path)
    recorded = _recorded(record_path, path, stamps, expected)
    if recorded:
        return recorded
    started = time.time_ns()
    digest = sha256_file(path)
    settled_before = started - int(HASH_SETTLE_S * 1e9)
    if max(stamps[3], stamps[4]) < settled_before and _stamps(path.stat()) == stamps:  # mtime and ctime both settled
        if _write(record_path, {"path": str(path), "stamps": stamps, "sha256": digest}):
            _prune_now_and_then(record_path.parent)  # only then: on a full disk its marker was the one file left behind
    return digest


def vouched(path: str | Path, expected: str) -> bool:
    """Whether a record says, without hashing, that the file at ``path`` is still the one whose sha256 is ``expected``
    (a load that verified it wrote one, where the file had settled). False where none does: unknown, not different."""
    path = Path(path).resolve()
    try:
        return _recorded(_record_path(path), path, _stamps(path.stat()), expected) == expected
    except (OSError, SdoptError):
        return False


def _recorded(record_path: Path, path: Path, stamps: list[int], expected: str | None) -> str | None:
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record["path"] == str(path) and record["stamps"] == stamps and len(record["sha256"]) == 64 \
                and (expected is None or record["sha256"] == expected):
            return str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _prune_now_and_then(folder: Path) -> None:
    """Remove the records of files that no longer exist, at most once every PRUNE_EVERY_S. A record is named by its
    path, so a rewritten file replaces its own; but every artifact exported, moved or deleted left its files' records
    for good (1,066 in one developer's cache after a few weeks, 32 of them for files gone), read by nothing. Best
    effort, as every record is: an unreadable record or folder is left as it is."""
    marker = folder / PRUNED
    try:
        if time.time() - marker.stat().st_mtime < PRUNE_EVERY_S:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        marker.touch()  # first: a second process writing a record now does not prune the same folder too
        records = list(folder.glob("*.json"))
    except OSError:
        return
    for record_path in records:
        try:
            recorded = Path(json.loads(record_path.read_text(encoding="utf-8"))["path"])
            if not recorded.exists():
                record_path.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            continue


def _write(record_path: Path, record: dict) -> bool:
    """The record, written whole or not at all (renamed into place); nothing when the cache folder is not writable or
    its disk is full, not even the temporary file (on a full disk, every load left one per file). Whether it was written."""
    # Per thread as well as per process: two pipelines loading one file in two threads wrote one temporary file, and
    # the first rename could move the other's half-written record into place.
    tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record))
        os.replace(tmp, record_path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a cache path that is no folder: nothing was made
            pass
        return False
    return True
