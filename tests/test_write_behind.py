"""Outputs written behind the model (`birefnet.write_behind`): every job runs, one worker keeps the
order (a video encoder's frames), few jobs wait at once, and a failed write stops the run with its own
error while the jobs not yet started never start."""

from __future__ import annotations

import threading
import time

import pytest

from birefnet.write_behind import WriteBehind


def test_one_worker_keeps_the_order_and_every_job_runs():
    done = []
    with WriteBehind(workers=1) as writer:
        for number in range(50):
            writer.submit(done.append, number)
    assert done == list(range(50))


def test_jobs_run_side_by_side_and_few_wait_at_once():
    running, most, lock = [0], [0], threading.Lock()
    waiting = []

    def job():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    with WriteBehind(workers=3, pending=4) as writer:
        for _ in range(20):
            writer.submit(job)
            waiting.append(len(writer._pending))
    assert most[0] >= 2  # threads overlap (compression releases Python's lock)
    assert max(waiting) <= 4


def test_a_failed_write_stops_the_run_with_its_own_error():
    started = []

    def job(number):
        started.append(number)
        if number == 2:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        with WriteBehind(workers=1, pending=2) as writer:
            for number in range(100):
                writer.submit(job, number)
                time.sleep(0.001)
    assert 2 in started and len(started) < 100  # the run stopped at the next submit after the failure


def test_leaving_on_an_error_never_starts_the_waiting_jobs():
    gate, started = threading.Event(), []

    def job(number):
        started.append(number)
        gate.wait(5)

    with pytest.raises(KeyboardInterrupt):
        with WriteBehind(workers=1, pending=10) as writer:
            for number in range(5):
                writer.submit(job, number)
            threading.Timer(0.2, gate.set).start()  # the running job ends after the block cancelled the rest
            raise KeyboardInterrupt
    assert started in ([], [0])
