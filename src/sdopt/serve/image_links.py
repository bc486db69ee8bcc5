"""Links to a finished job's images: OpenAI's ``response_format=url``.

OpenAI answers with URLs that work without the API key for 60 minutes. A link here names the job, the image and
when it expires, signed with an HMAC under the server's key, so it needs no credentials and cannot be made for
another job or made to last longer. It also names which key signed it (``k``, not a secret: a hash of it), so that a
link from before a restart is told apart from a tampered one: the first is gone (410), the second refused (403).

Where the images live: by default in memory, with the job (the newest ``IMAGES_KEPT`` jobs', serve/worker.py), under
a key drawn at start, so a restart ends every link. With ``sdopt serve --image-dir DIR`` the server also writes each
linked image to ``DIR/JOB/N.png`` (``.jpeg``, ``.webp`` as asked) and keeps its key in ``DIR/link-key``: a link then works for its whole 60 minutes,
across restarts and however many jobs ran since. Files older than a link's lifetime are deleted as new ones are
written.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from sdopt.errors import SdoptError
from sdopt.write_failures import DISK_FULL, out_of_space
from sdopt.serve.errors import RequestError

LIFETIME_S = 3600  # OpenAI's: "URLs are only valid for 60 minutes after the image has been generated"
SWEEP_EVERY_S = 60.0  # how often keep() looks for expired job folders
PATH = "/v1/images/files"
KEY_FILE = "link-key"
log = logging.getLogger("sdopt.serve")
PRIVATE_FOLDER = 0o700  # --image-dir and its job folders, where sdopt makes them: this user's only, as the files in them
_JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,200}")  # what a folder under --image-dir may be named (job ids are uuid hex)


class ImageLinks:
    def __init__(self, folder: str | Path | None = None) -> None:
        """folder: sdopt serve --image-dir (None: the images stay in memory and the key is drawn now)."""
        self.folder = Path(folder) if folder is not None else None
        self._key = _folder_key(self.folder) if self.folder is not None else secrets.token_bytes(32)
        self.key_id = hashlib.sha256(self._key).hexdigest()[:8]
        self._swept = float("-inf")  # when _sweep last walked the folder
        if self.folder is not None:
            self._sweep()

    def _signature(self, job_id: str, index: int, expires: int, output_format: str = "png", quality: int | None = None) -> str:
        # A PNG link signs what it signed before JPEG and WebP were sent (links made then still answer); the others sign
        # their format and quality too, so a link cannot be changed into another encoding of the image.
        encoding = "" if (output_format, quality) == ("png", None) else f"/{output_format}/{quality}"
        return hmac.new(self._key, f"{job_id}/{index}/{expires}{encoding}".encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, base_url: str, job_id: str, index: int, now: float | None = None, output_format: str = "png",
            quality: int | None = None) -> str:
        """The link to image ``index`` of job ``job_id`` as a file of ``output_format`` (png, jpeg, webp) at ``quality``;
        base_url: the server's as the client reached it."""
        expires = int((time.time() if now is None else now) + LIFETIME_S)
        signature = self._signature(job_id, index, expires, output_format, quality)
        return (f"{base_url.rstrip('/')}{PATH}/{job_id}/{index}.{output_format}?expires={expires}&signature={signature}"
                f"&k={self.key_id}" + (f"&q={quality}" if quality is not None else ""))

    def check(self, job_id: str, index: int, expires: int, signature: str, key_id: str | None = None, output_format: str = "png",
              quality: int | None = None) -> None:
        """A RequestError unless the link was made here (403; 410 when made under a key this server no longer has: before
        a restart) and is unexpired (410)."""
        if not hmac.compare_digest(signature.encode(), self._signature(job_id, index, expires, output_format, quality).encode()):
            if key_id is not None and key_id != self.key_id:
                # The key file by its name, not its path: anyone may send a link, and the folder's absolute path names
                # the operator's home and user (the server's log says where it is).
                keep = ("" if self.folder is None else
                        f" (it was made under another key than the one in --image-dir's {KEY_FILE}: before a restart without --image-dir, "
                        "with another --image-dir, or before that key file was deleted)")
                raise RequestError("url", "this image link was made before the server restarted, and its image is gone: generate it again"
                                          + (keep or "; `sdopt serve --image-dir DIR` keeps images and links across restarts"), status=410)
            raise RequestError("signature", "this image link was not made by this server, or was changed: generate the image again", status=403)
        if time.time() > expires:
            raise RequestError("expires", f"this image link expired {LIFETIME_S // 60} minutes after the image was made: generate it again", status=410)

    def keep(self, job_id: str, files: list[bytes], output_format: str = "png") -> None:
        """Write a job's linked images (the files' bytes, of ``output_format``) under the folder, each in place whole or
        not at all."""
        if self.folder is None:
            return
        self._sweep()
        job_folder = self.folder / job_id
        try:
            job_folder.mkdir(mode=PRIVATE_FOLDER, exist_ok=True)  # as private as its images (0600): 0755 let other users list them
            for index, data in enumerate(files):
                temporary = _written(job_folder, data, suffix=".tmp")
                try:
                    os.replace(temporary, job_folder / f"{index}.{output_format}")
                except BaseException:
                    os.unlink(temporary)
                    raise
        except OSError as exc:  # a full disk, most often: the client is told, not answered a bare 500
            full = out_of_space(exc)
            why = "its disk is full" if full else exc.strerror or str(exc)
            log.error("sdopt serve: cannot keep job %s's images in --image-dir %s: %s%s", job_id, self.folder, why,
                      f"; {DISK_FULL}" if full else "")
            raise RequestError("response_format", f"the image was made, but the server cannot keep it for its link (--image-dir: {why}): "
                                                  "ask for response_format=b64_json", status=507 if full else 500) from exc

    def stored(self, job_id: str, index: int, output_format: str = "png") -> bytes | None:
        """An image ``keep`` wrote, None when there is none (no folder, or deleted)."""
        if self.folder is None or not _JOB_ID.fullmatch(job_id) or index < 0 or not output_format.isalpha():
            return None
        try:
            return (self.folder / job_id / f"{index}.{output_format}").read_bytes()
        except OSError:
            return None

    def _sweep(self) -> None:
        """Delete the job folders no unexpired link can reach (a minute's grace for clocks); at most once a minute: an
        hour of a busy server's folders is tens of thousands of entries, which every linked answer walked."""
        now = time.monotonic()
        if now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        oldest = time.time() - LIFETIME_S - 60
        for entry in self.folder.iterdir():
            try:
                if entry.is_dir() and _JOB_ID.fullmatch(entry.name) and entry.stat().st_mtime < oldest:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass  # gone meanwhile (another process sweeping the same folder)


def _folder_key(folder: Path) -> bytes:
    """The signing key kept in ``folder`` (made there, readable by this user only, the first time), so links survive a restart."""
    path = folder / KEY_FILE
    try:
        folder.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)  # a folder made here: its listing names every job id
        if not path.exists():
            temporary = _written(folder, secrets.token_hex(32).encode(), prefix=".link-key-")  # mode 0600
            try:
                os.link(temporary, path)  # in place whole; a server starting at the same time keeps the first one made
            except FileExistsError:
                pass
            finally:
                os.unlink(temporary)
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        if out_of_space(exc):
            raise SdoptError(f"--image-dir {folder}: cannot keep the image links' key in {path}: its disk is full; {DISK_FULL}") from None
        raise SdoptError(f"--image-dir {folder}: cannot keep the image links' key in {path} ({exc}): give a folder this user can write, "
                         f"or delete a damaged {KEY_FILE}") from None
    if len(key) < 16:
        raise SdoptError(f"--image-dir {folder}: {path} holds no usable key: delete it and a new one is made")
    return key


def _written(folder: Path, data: bytes, **name: str) -> str:
    """The path of a new file in ``folder`` (mode 0600, named as tempfile.mkstemp's ``name``) holding ``data`` whole; on an
    error nothing is left: a full disk often fails only at the close, when the buffered bytes go out."""
    fd, temporary = tempfile.mkstemp(dir=folder, **name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary
