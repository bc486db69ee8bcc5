"""The error a route answers with 4xx: what is wrong, and which field, in the API's own words."""

from __future__ import annotations

from sdopt.errors import SdoptError


class RequestError(SdoptError):
    """Input a route refuses: 422 (or ``status``) with the field named as the API names it."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.status = field, status
