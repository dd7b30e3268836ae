"""How far a CPU forward pass is while it runs, so that progress bars (ComfyUI's, the server's, Krita's) move
within a pass that takes seconds to minutes, not only between passes.

A pass's calls before each submodule (`pass_hooks`) come in the same order at every input size, and the n-th
comes at nearly the same share of the pass's time; so the times of a model's last whole pass say how far a pass
is at each call. A model's first pass has no earlier pass to go by: it reports 0 until it ends, unless
`learn_from_a_small_pass` set the clock first (what the server and the ComfyUI loader do on a CPU). GPU passes
(milliseconds) have no calls: there bars move pass by pass. A pass that runs as one operation (OpenVINO's)
says how far it is itself, by its own clock (`report_within_pass`).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from contextvars import ContextVar
from typing import Callable, Iterator

import torch

from .device import slow_fp16
from .pass_hooks import inside_cpu_passes, setting, watchable_on_cpu


class PassClock:
    """One model's pass, as the share of its time reached at each of its calls (from its last whole pass)."""

    def __init__(self):
        self.shares: list[float] = []

    def learn(self, times: list[float], start: float, end: float) -> None:
        if len(times) > 1 and end > start:
            self.shares = [(t - start) / (end - start) for t in times]

    def share(self, calls: int) -> float:
        """How far a pass is once `calls` of its calls have come (0 before the model has run a pass whole)."""
        if not self.shares or calls == 0:
            return 0.0
        return self.shares[min(calls, len(self.shares)) - 1]


_REPORT: ContextVar[Callable[[float], None] | None] = ContextVar("birefnet_pass_share", default=None)
CLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its PassClock, gone with the model


def clock_of(model) -> PassClock:
    if model not in CLOCKS:
        CLOCKS[model] = PassClock()
    return CLOCKS[model]


SMALL_PASS = 256  # the side of the pass that sets a new model's clock


def learn_from_a_small_pass(model) -> None:
    """Sets the clock of a model that runs on the CPU from one pass at SMALL_PASS² (0.9 s for Swin-L on 2
    cores), so that its first real pass shows progress too: the shares of a first 256² pass are within 5% on
    average (11% at most) of those of a 1024² pass, and each whole pass after corrects them. Models elsewhere
    (GPU, OpenVINO, `torch.compile`d), fp16 models on CPUs without fast fp16 and models whose clock is set
    already are left alone."""
    if not watchable_on_cpu(model) or clock_of(model).shares or getattr(model, "outside_torch_devices", False):
        return  # OpenVINO times its passes itself
    dtype = next(model.parameters()).dtype
    if slow_fp16(torch.device("cpu"), dtype):  # fp16 on most CPUs takes minutes
        return
    with torch.inference_mode(), pass_shares(model, lambda share: None):
        model(torch.zeros(1, 3, SMALL_PASS, SMALL_PASS, dtype=dtype))


@contextlib.contextmanager
def pass_shares(model, report: Callable[[float], None]) -> Iterator[None]:
    """While inside: `report(share)` before each submodule of `model`'s CPU passes in this thread, with how far
    the pass is (0 to 1, by the model's last whole pass); each pass that ends whole teaches the model's clock."""
    clock = clock_of(model)
    times: list[float] = []
    started = [0.0]

    def before(module) -> None:
        now = time.perf_counter()
        if module is model:  # a pass starts
            times.clear()
            started[0] = now
        times.append(now)
        report(clock.share(len(times)))

    def after_pass() -> None:
        clock.learn(times, started[0], time.perf_counter())

    with inside_cpu_passes(model, before, after_pass) as hooked, setting(_REPORT, report if hooked else None):
        yield


def report_within_pass(share: float) -> None:
    """For a pass that runs as one operation (OpenVINO's): how far it is (0 to 1, by its own clock), for the
    `pass_shares` this thread is in, if any (a context variable: other threads' passes are not reported)."""
    report = _REPORT.get()
    if report is not None:
        report(share)


class WorkProgress:
    """How far work of several passes is (0 to 1): its whole passes, plus the share of the one running. It
    starts with the passes `planned` (0: not known; the first pass's share then counts for nothing, so the
    fraction never goes back), and the library's callback(done, total) after each pass gives the count.
    One thread moves it, others may read it: each change is one assignment."""

    def __init__(self, planned: int = 0):
        self._now = (0, planned, 0.0)  # passes done, passes in all, share of the running pass

    def in_pass(self, share: float) -> None:
        done, total, _ = self._now
        self._now = (done, total, share)

    def pass_done(self, done: int, total: int) -> None:
        self._now = (done, total, 0.0)

    @property
    def fraction(self) -> float:
        done, total, share = self._now
        return min(1.0, (done + share) / total) if total > 0 else 0.0
