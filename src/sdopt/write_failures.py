"""What a failed write ran into, and the one line that says so: a full disk (ENOSPC, EDQUOT) or a file-size limit
(EFBIG: this process's ``ulimit -f``, or the file system's own largest file), found in an exception's chain or in a
library's or a bench worker's message (safetensors' "No space left on device (os error 28)").

The commands' one-line errors (cli/environment.py, generate, the bench runner, serve's image links) read these, so
every writer says the same thing of the same failure.
"""

from __future__ import annotations

import errno
from typing import Callable

DISK_FULL = "free some space, or choose an output path on another disk"


def says_out_of_space(text: str) -> bool:
    """Whether an error's text (a library's message, a bench worker's recorded error) is a full disk's."""
    return "No space left on device" in text or "Disk quota exceeded" in text


def _in_chain(exc: BaseException | None, errnos: tuple[int, ...], says: Callable[[str], bool]) -> bool:
    """Whether an OSError with one of ``errnos``, or an exception whose text ``says`` so (a library's own message), is in
    ``exc``'s chain of causes and contexts."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno in errnos) or says(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_space(exc: BaseException) -> bool:
    """Whether a failed write ran out of disk space: an OSError ENOSPC or EDQUOT in ``exc``'s chain, or a library's
    message of one (safetensors' "No space left on device (os error 28)")."""
    return _in_chain(exc, (errno.ENOSPC, errno.EDQUOT), says_out_of_space)


# A write past RLIMIT_FSIZE fails with EFBIG (Python ignores the SIGXFSZ that would end the process): a traceback
# "OSError: [Errno 27] File too large" (safetensors': "File too large (os error 27)") said nothing of the limit.
FILE_SIZE_LIMIT = "a file would pass this process's file-size limit ({limit}: ulimit -f)"
RAISE_FILE_SIZE_LIMIT = "raise the limit (ulimit -f unlimited)"
# Without such a limit EFBIG is the file system's own largest file: FAT32 takes none of 4 GiB (an SDXL UNet's 10 GB on a
# USB stick), and "(?: ulimit -f); raise the limit" told a user whose limit was unlimited already to raise it.
FILE_SYSTEM_LIMIT = "a file is larger than the file system there takes (FAT32 takes none of 4 GiB or more)"
WRITE_ELSEWHERE = "write it to a disk whose file system takes larger files (ext4, NTFS, exFAT)"


def file_too_large() -> tuple[str, str]:
    """What a write that failed with "File too large" passed, and what to do: this process's limit where one is set
    (ulimit -f), else the file system's."""
    limit = file_size_limit()
    if limit is None:
        return FILE_SYSTEM_LIMIT, WRITE_ELSEWHERE
    return FILE_SIZE_LIMIT.format(limit=size_text(limit)), RAISE_FILE_SIZE_LIMIT


def file_size_limit() -> int | None:
    """The most bytes this process may write to one file (ulimit -f); None where there is no limit or it cannot be read."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return None
    return None if limit == resource.RLIM_INFINITY else limit


def size_text(size: int) -> str:
    """A file-size limit as a user reads it: 8 KiB, 2.0 MiB."""
    return f"{size // 1024:,} KiB" if size < 2**20 else f"{size / 2**20:,.1f} MiB"


def says_past_file_size_limit(text: str) -> bool:
    """Whether an error's text (a library's message, a bench worker's recorded error) is EFBIG's."""
    return "File too large" in text


def past_file_size_limit(exc: BaseException) -> bool:
    """Whether a failed write passed the file-size limit: an OSError EFBIG in ``exc``'s chain, or a library's message of
    one (safetensors' "File too large (os error 27)")."""
    return _in_chain(exc, (errno.EFBIG,), says_past_file_size_limit)
