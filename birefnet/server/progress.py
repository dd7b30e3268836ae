"""How far a request's work is, for clients that show a progress bar (GET /v1/progress/{request_id}).

A request names itself with an X-Request-ID header. Its work is its passes through the network (one;
two with highres; one per box), then the refinement and the PNG. On a CPU a pass takes seconds to minutes,
so the share of the current pass counts too: the model's checks before each submodule
(`stopping.checks_inside`) come in the same order at every size, and the n-th comes at nearly the same share
of the pass's time, so the times of the model's last whole pass say how far a pass is at each check. On a
GPU (no checks inside a pass: it takes milliseconds) the share moves pass by pass.
"""

from __future__ import annotations

import re
import time

from .errors import RequestError

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
NETWORK_SHARE = 0.95  # of the whole work: the passes; the rest is the refinement and the PNG


def check_request_id(request_id: str) -> str:
    if not REQUEST_ID.fullmatch(request_id):
        raise RequestError(400, f"X-Request-ID {request_id[:80]!r}: use 1 to 64 letters, digits, - or _ (a UUID does)")
    return request_id


class PassClock:
    """One model's pass, as a share of its time reached at each of its checks (from its last whole pass)."""

    def __init__(self):
        self.shares: list[float] = []

    def learn(self, times: list[float], start: float, end: float) -> None:
        if len(times) > 1 and end > start:
            self.shares = [(t - start) / (end - start) for t in times]

    def share(self, checks: int) -> float:
        """How far a pass is once `checks` of its checks have come (0 before it is known)."""
        if not self.shares or checks == 0:
            return 0.0
        return self.shares[min(checks, len(self.shares)) - 1]


class Progress:
    """One request's progress: `waiting` until the model starts on it, then the share of its work done. The
    model's thread moves it, the event loop reads it: what a read needs changes in one assignment."""

    def __init__(self):
        self.started = False
        self.clock = PassClock()  # the model's, from `start` on
        self._now = (0, 1, [])  # (whole passes done, passes planned, check times of this pass)
        self._pass_start = 0.0

    def start(self, clock: PassClock, passes: int) -> None:
        """In the model's thread, as the work of `passes` passes begins."""
        self.clock, self._pass_start = clock, time.perf_counter()
        self._now = (0, max(passes, 1), [])
        self.started = True

    def checked(self) -> None:
        """A check inside a pass (before one submodule)."""
        self._now[2].append(time.perf_counter())

    def pass_done(self, done: int, total: int) -> None:
        """The library's callback after each pass: the model's clock learns from a pass that ran whole."""
        now = time.perf_counter()
        self.clock.learn(self._now[2], self._pass_start, now)
        self._now, self._pass_start = (done, max(total, 1), []), now

    @property
    def share(self) -> float:
        if not self.started:
            return 0.0
        done, passes, times = self._now
        return NETWORK_SHARE * min(1.0, (done + self.clock.share(len(times))) / passes)

    def report(self) -> dict:
        return {"state": "running" if self.started else "waiting", "progress": round(self.share, 4)}


class Registry:
    """The requests in flight that named themselves, by X-Request-ID (read by the event loop, moved by the
    model's thread: plain attribute writes, no lock needed)."""

    def __init__(self):
        self.requests: dict[str, Progress] = {}
        self.clocks: dict[int, PassClock] = {}

    def add(self, request_id: str) -> Progress:
        if request_id in self.requests:
            raise RequestError(
                409, f"X-Request-ID {request_id!r} is in use by a request in flight: give each request its own"
            )
        progress = self.requests[request_id] = Progress()
        return progress

    def remove(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def clock(self, model) -> PassClock:
        """The model's clock (a new model, new weights: a new clock)."""
        if id(model) not in self.clocks:
            self.clocks = {id(model): PassClock()}  # one model is served at a time
        return self.clocks[id(model)]

    def report(self, request_id: str) -> dict:
        progress = self.requests.get(request_id)
        if progress is None:
            raise RequestError(
                404, f"no request in flight has X-Request-ID {request_id!r} (it was answered, or never sent)"
            )
        return {"request_id": request_id, **progress.report()}
