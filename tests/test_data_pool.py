"""The data work's process pool: a worker that dies is reported, never waited on forever."""

from __future__ import annotations

import os
import signal
import time

from vatt.data.pool import WorkerDied, map_in_processes


def _square_or_die(task):
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    time.sleep(0.05)
    return task * task


def test_a_task_that_kills_its_worker_is_reported_alone():
    finished = []
    results = map_in_processes(_square_or_die, [1, 2, "die", 3, 4, 5], workers=2,
                               done=lambda: finished.append(1))
    assert results[:2] == [1, 4] and results[3:] == [9, 16, 25]
    assert isinstance(results[2], WorkerDied) and "died" in results[2].reason
    assert len(finished) == 6
