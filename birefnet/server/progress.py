"""How far a request's work is, for clients that show a progress bar (GET /v1/progress/{request_id}).

A request names itself with an X-Request-ID header. Its work is its passes through the network (one;
two with highres; one per box), then the refinement and the PNG. On a CPU a pass takes seconds to minutes,
so the share of the current pass counts too (`pass_clock`: by the model's last whole pass; on a GPU, where a
pass takes milliseconds, the share moves pass by pass).
"""

from __future__ import annotations

import re

from ..pass_clock import WorkProgress
from .errors import RequestError

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
NETWORK_SHARE = 0.95  # of the whole work: the passes; the rest is the refinement and the PNG


def check_request_id(request_id: str) -> str:
    if not REQUEST_ID.fullmatch(request_id):
        raise RequestError(400, f"X-Request-ID {request_id[:80]!r}: use 1 to 64 letters, digits, - or _ (a UUID does)")
    return request_id


class Progress:
    """One request's progress: `waiting` until the model starts on it, then the share of its work done (its
    passes: `WorkProgress`). The model's thread moves it, the event loop reads it: each change is one
    assignment."""

    def __init__(self):
        self.started = False
        self.work = WorkProgress()

    def start(self, passes: int) -> None:
        """In the model's thread, as the work of `passes` passes begins."""
        self.work = WorkProgress(max(passes, 1))
        self.started = True

    @property
    def share(self) -> float:
        return NETWORK_SHARE * self.work.fraction if self.started else 0.0

    def report(self) -> dict:
        return {"state": "running" if self.started else "waiting", "progress": round(self.share, 4)}


class Registry:
    """The requests in flight that named themselves, by X-Request-ID (read by the event loop, moved by the
    model's thread: plain attribute writes, no lock needed)."""

    def __init__(self):
        self.requests: dict[str, Progress] = {}

    def add(self, request_id: str) -> Progress:
        if request_id in self.requests:
            raise RequestError(
                409, f"X-Request-ID {request_id!r} is in use by a request in flight: give each request its own"
            )
        progress = self.requests[request_id] = Progress()
        return progress

    def remove(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def report(self, request_id: str) -> dict:
        progress = self.requests.get(request_id)
        if progress is None:
            raise RequestError(
                404, f"no request in flight has X-Request-ID {request_id!r} (it was answered, or never sent)"
            )
        return {"request_id": request_id, **progress.report()}
