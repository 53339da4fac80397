"""The data work's process pool: a worker that dies is reported, never waited on forever."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from vatt.config import load_config
from vatt.data.ingest import _process_shard
from vatt.data.pool import RemoteTraceback, WorkerDied, map_in_processes

DEADLINE_S = 180  # a hang fails the test instead of blocking CI


def _square_or_die(task):
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    time.sleep(0.05)
    return task * task


def _workers() -> list[int]:
    """This process's live pool workers: the forkserver's children (the server stays)."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    return [child.pid for child in psutil.Process(server).children()
            if child.status() != psutil.STATUS_ZOMBIE]


def _in_thread(fn):
    """fn() in a thread that must end within DEADLINE_S; its result or exception."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fn()
        except BaseException as err:  # handed to the test
            outcome["error"] = err

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(DEADLINE_S)
    assert not runner.is_alive(), f"still running after {DEADLINE_S} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_a_task_that_kills_its_worker_is_reported_alone():
    finished = []
    results = _in_thread(lambda: map_in_processes(
        _square_or_die, [1, 2, "die", 3, 4, 5], workers=2, done=lambda: finished.append(1)))
    assert results[:2] == [1, 4] and results[3:] == [9, 16, 25]
    assert isinstance(results[2], WorkerDied)
    assert "died running it, twice" in results[2].reason and "SIGKILL" in results[2].reason
    assert len(finished) == 6
    assert _workers() == []  # every worker reaped


def _fail_on_three(task):
    if task == 3:
        raise KeyError(f"no such item {task}")
    time.sleep(0.05)
    return task


def test_an_exception_in_a_task_propagates_with_its_remote_traceback():
    with pytest.raises(KeyError, match="no such item 3") as caught:
        map_in_processes(_fail_on_three, list(range(8)), workers=3)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "_fail_on_three" in str(cause)
    assert _workers() == []  # the others were stopped, not left running
    assert map_in_processes(_fail_on_three, [0, 1, 2], workers=5) == [0, 1, 2]  # ordered


def _shard_stalling_once(task: dict) -> dict:
    """`_process_shard`, except that the first try of shard train-000003 writes its process id
    and waits there, to be SIGKILLed from outside in the middle of its task."""
    marker = Path(task["root"]).parent / "stalled-worker"
    if task["shard"].endswith("train-000003.tar") and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(DEADLINE_S)
    return _process_shard(task)


def test_ingest_finishes_when_a_worker_is_killed_from_outside(tmp_path, monkeypatch):
    """The synthetic UCF101 layout (40 videos, 20 shards), 2 workers, the one running shard
    train-000003 SIGKILLed by the test: the run completes (the killed task runs again in a
    fresh worker), with shards byte-identical to a run without the kill."""
    import vatt.data.ingest as ingest_module
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

    clean = run(tmp_path / "clean")
    monkeypatch.setattr(ingest_module, "_process_shard", _shard_stalling_once)
    marker = raw / "stalled-worker"

    def kill_when_stalled():
        deadline = time.monotonic() + DEADLINE_S
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the stalled task never started"
            time.sleep(0.01)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_stalled, daemon=True)
    killer.start()
    killed = _in_thread(lambda: run(tmp_path / "killed"))
    killer.join(1)
    assert marker.exists()  # the kill happened
    assert killed["clips"] == clean["clips"] == 40 and killed["quarantined"] == 0
    clean_shards = sorted((tmp_path / "clean" / "ucf101" / "shards").iterdir())
    assert [p.name for p in clean_shards] == sorted(
        p.name for p in (tmp_path / "killed" / "ucf101" / "shards").iterdir())
    for path in clean_shards:
        assert (tmp_path / "killed" / "ucf101" / "shards" / path.name).read_bytes() == \
            path.read_bytes()
    assert _workers() == []
