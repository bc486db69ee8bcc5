"""Bearer key and HTTP Basic credentials, compared in constant time.

With ``--api-key``, a request needs ``Authorization: Bearer KEY`` (what the
OpenAI SDK sends); with ``--api-auth USER:PASS``, HTTP Basic (what
AUTOMATIC1111's ``--api-auth`` and the ``webuiapi`` client's ``set_auth`` use).
With both, either is enough. Without either, every request is let in.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request

from sdopt.serve.settings import ServeSettings


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def authorized(header: str | None, settings: ServeSettings) -> bool:
    if not settings.needs_auth:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and settings.api_key is not None:
        return _equal(value, settings.api_key)
    if scheme == "basic" and settings.basic_credentials is not None:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        want_user, want_password = settings.basic_credentials
        # Both compared whatever the first gives, so the time says nothing about which was wrong.
        return _equal(user, want_user) & _equal(password, want_password)
    return False


def challenge(settings: ServeSettings) -> str:
    schemes = []
    if settings.api_key is not None:
        schemes.append('Bearer realm="sdopt"')
    if settings.api_auth is not None:
        schemes.append('Basic realm="sdopt"')
    return ", ".join(schemes)


def require_auth(request: Request) -> None:
    """FastAPI dependency on every route but /health, the page's HTML, FastAPI's API schema (/docs, /redoc,
    /openapi.json) and OpenAI's signed image links (their own credential: serve/image_links.py)."""
    settings: ServeSettings = request.app.state.settings
    if not authorized(request.headers.get("authorization"), settings):
        what = " or ".join(
            w for w, on in (("Authorization: Bearer KEY", settings.api_key), ("HTTP Basic USER:PASS", settings.api_auth)) if on
        )
        raise HTTPException(401, f"missing or wrong credentials: send {what}", headers={"WWW-Authenticate": challenge(settings)})
