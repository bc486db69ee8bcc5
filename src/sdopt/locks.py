"""Folder locks: one sdopt command at a time writes a report folder (bench -o) or a work folder (--work).

Two benches into one -o had both written their workers' results into one raw/ and a report mixed their rows; two
optimize runs on one --work built into each other's candidate folders. ``folder_lock`` holds a folder for a command
(flock on a lock file inside it: the kernel lets go when the holder exits, killed too, so no stale lock can refuse
the next command; a killed holder's lock file stays, and the next command takes it over);
``check_not_locked`` refuses, before any work, a folder another process holds. POSIX only (fcntl): where there is
none (Windows) the folder is not locked, which the command says once, and the work runs as before locks were added.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator

from sdopt.errors import SdoptError


def _lock_file(folder: Path, role: str) -> Path:
    return folder / f".sdopt-{role}.lock"


_HELD: set[Path] = set()  # the lock files this process holds (folder_lock): its own checks under them pass


def _fcntl():
    """The fcntl module, or None on a platform without it (Windows: importing it there was a ModuleNotFoundError
    traceback that ended every bench with -o and every optimize before any work)."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def check_not_locked(folder: Path, role: str, flag: str) -> None:
    """Before any work: refused while another process holds ``folder``'s lock for ``role`` (folder_lock)."""
    fcntl = _fcntl()
    if fcntl is None:  # nothing could have locked it
        return
    if _lock_file(folder, role).absolute() in _HELD:
        return
    try:
        handle = open(_lock_file(folder, role), encoding="utf-8")
    except OSError:  # no lock file (or no folder): nobody holds it
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(folder, flag, handle.read().strip()) from None


def _in_use(folder: Path, flag: str, holder: str) -> SdoptError:
    return SdoptError(f"{flag} {folder} is in use by {holder or 'another sdopt command'}: wait for it to finish, "
                      "or choose another folder")


@contextlib.contextmanager
def folder_lock(folder: Path, role: str, flag: str) -> Iterator[None]:
    """Hold ``folder`` for one command while it writes there (``role``: what it is to that command, the lock file's name;
    ``flag``: how the user named it). A second sdopt command on the same folder — two benches with one -o — is refused
    with one line naming the holder, where both had written into it and a report mixed their rows. flock: the kernel
    releases it when the holder exits, killed too, so no stale lock refuses the next command (a SIGKILLed holder leaves
    the file itself, which the next one takes over). The file is removed while held, and a
    lock taken on a file that was removed meanwhile is taken again on the new one."""
    fcntl = _fcntl()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        warnings.warn(f"{flag} {folder} is not locked against a second sdopt command on this platform (no fcntl): "
                      "run one at a time into it", UserWarning)
        yield
        return
    path = _lock_file(folder, role)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise _in_use(folder, flag, holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # its holder removed it as we opened it: take the one now at the path
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"sdopt {role} pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD.add(path.absolute())
        yield
    finally:
        _HELD.discard(path.absolute())
        path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def swapping_into(parent: Path) -> Iterator[None]:
    """Wait for, then hold, the folder ``parent`` while an output is checked and renamed into it (outputs.atomic_output_dir).
    Two commands finishing into one path at once had each checked that it was free, then both renamed: the second
    moved the first's new artifact aside and deleted it without --force, or failed with an OSError traceback leaving
    its finished output hidden. A swap takes microseconds, so this waits rather than refuses. An flock on the folder
    itself: no lock file to leave behind. Where there is none (Windows), or the file system refuses it (NFS takes no
    exclusive flock on a folder), the swap runs unlocked as before."""
    fcntl = _fcntl()
    try:
        handle = os.open(parent, os.O_RDONLY) if fcntl is not None else None
    except OSError:
        handle = None
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        if handle is not None:
            os.close(handle)  # lets go of the lock too
