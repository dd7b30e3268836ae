"""The server's errors: a request's (an HTTP status and a one-line message, sent as {"error": ...}), and
the one that stops the work of a request whose client has left (nobody is sent anything)."""

from __future__ import annotations


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message = status, " ".join(str(message).split())  # always one line
        self.headers = headers  # e.g. Retry-After with a 503


class ClientLeft(Exception):
    """Raised in the model's thread at the work's next check once the request's client has gone."""
