"""The data work's process pool: a worker that dies is reported, never waited on forever."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from vatt.config import load_config
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


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def test_ingest_finishes_when_a_worker_is_killed_mid_ingest(tmp_path):
    """The synthetic UCF101 layout (40 videos), 2 worker processes, one SIGKILLed while it
    encodes: the run completes (it used to hang in Pool.imap) with every shard, byte-identical
    to a run without the kill."""
    from vatt.data.ingest import ingest_index
    from vatt.data.sources import READERS
    from vatt.data.synthetic import generate

    cfg = load_config("tiny", ["data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=2",
                               "data.ingest.media_per_shard=2"])
    raw = tmp_path / "raw"
    generate(cfg, raw, progress=False)

    def run(out):
        return ingest_index(cfg, READERS["ucf101"](raw / "ucf101", cfg.data.ingest),
                            raw / "ucf101", out, "ucf101", progress=False)

    before = _children()
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(summary=run(tmp_path / "killed")),
                              daemon=True)
    runner.start()
    deadline, killed = time.monotonic() + 120, None
    while killed is None:  # the first worker process that is there, while it works
        assert runner.is_alive() and time.monotonic() < deadline, "no worker process to kill"
        for pid in sorted(_children() - before):
            try:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
            except ProcessLookupError:  # it had just ended
                continue
        time.sleep(0.01)
    runner.join(timeout=300)
    assert not runner.is_alive(), "ingest hung after its worker was killed"
    killed = outcome["summary"]
    clean = run(tmp_path / "clean")
    assert killed["clips"] == clean["clips"] and killed["quarantined"] == 0
    for path in sorted((tmp_path / "clean" / "ucf101" / "shards").iterdir()):
        assert (tmp_path / "killed" / "ucf101" / "shards" / path.name).read_bytes() == path.read_bytes()
