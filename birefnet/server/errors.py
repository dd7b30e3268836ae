"""The one error type of the server: an HTTP status and a one-line message, sent as {"error": ...}."""

from __future__ import annotations


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message = status, " ".join(str(message).split())  # always one line
        self.headers = headers  # e.g. Retry-After with a 503
