"""Links to a finished job's images: OpenAI's ``response_format=url``.

OpenAI answers with URLs that work without the API key for 60 minutes. A link here names the job, the image and
when it expires, signed with an HMAC under a key the server draws when it starts, so it needs no credentials and
cannot be made for another job or made to last longer. It answers while it is unexpired and the server still keeps
the job's images (the newest ``IMAGES_KEPT`` jobs', serve/worker.py); a restart ends every link.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sdopt.serve.errors import RequestError

LIFETIME_S = 3600  # OpenAI's: "URLs are only valid for 60 minutes after the image has been generated"
PATH = "/v1/images/files"


class ImageLinks:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _signature(self, job_id: str, index: int, expires: int) -> str:
        return hmac.new(self._key, f"{job_id}/{index}/{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, base_url: str, job_id: str, index: int, now: float | None = None) -> str:
        """The link to image ``index`` of job ``job_id``; base_url: the server's as the client reached it."""
        expires = int((time.time() if now is None else now) + LIFETIME_S)
        return f"{base_url.rstrip('/')}{PATH}/{job_id}/{index}.png?expires={expires}&signature={self._signature(job_id, index, expires)}"

    def check(self, job_id: str, index: int, expires: int, signature: str) -> None:
        """A RequestError unless the link was made here (403) and is unexpired (410)."""
        if not hmac.compare_digest(signature.encode(), self._signature(job_id, index, expires).encode()):
            raise RequestError("signature", "this image link was not made by this server (or by it before a restart): generate the image again", status=403)
        if time.time() > expires:
            raise RequestError("expires", f"this image link expired {LIFETIME_S // 60} minutes after the image was made: generate it again", status=410)
