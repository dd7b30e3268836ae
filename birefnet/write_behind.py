"""Outputs written behind the model: a few threads save one batch's files while the model runs on the next.

Once the model runs on a GPU, saving is most of a folder's or a clip's time: compressing a 720p RGBA
PNG takes about 0.1 s, a GPU forward a few hundredths. PNG compression and video encoding release
Python's lock, so threads overlap them with the model and with each other. At most `pending` jobs wait
(memory stays bounded: each holds a picture); the first failed job (a full disk) stops the run at the
next `submit` with its own error, and leaving the block cancels what has not started.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

WORKERS = min(4, max(2, os.cpu_count() or 1))  # compression releases Python's lock: threads run it side by side


class WriteBehind:
    """`submit(job, *args)` runs job(*args) in a thread pool; with `workers=1`, one at a time in order
    (a video encoder's frames)."""

    def __init__(self, workers: int = WORKERS, pending: int | None = None):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="birefnet-write")
        self._pending: deque[Future] = deque()
        self._limit = pending or 2 * workers

    def submit(self, job: Callable[..., object], *args) -> None:
        """Queue job(*args); first waits while `pending` jobs are outstanding, and raises the error of
        any earlier job that failed."""
        while self._pending and (len(self._pending) >= self._limit or self._pending[0].done()):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job, *args))

    def wait(self) -> None:
        """Every queued job done; the first error raised (the jobs after it are cancelled)."""
        error = None
        while self._pending:
            future = self._pending.popleft()
            if error is not None:
                future.cancel()
                continue
            try:
                future.result()
            except BaseException as err:
                error = err
        if error is not None:
            raise error

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind, err, traceback) -> None:
        try:
            if kind is None:
                self.wait()
            else:  # the run failed: what has not started never starts
                for future in self._pending:
                    future.cancel()
                self._pending.clear()
        finally:
            self._pool.shutdown(wait=True)
