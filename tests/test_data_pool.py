"""The data work's process pool: a worker that dies, or is alive but stuck, is reported, never
waited on forever."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from vatt.config import ConfigError, load_config
from vatt.data.ingest import ShardPlan, ShardResult, _process_shard
from vatt.data.media import MediaDecoder
from vatt.data.pool import RemoteTraceback, TimedOut, WorkerDied, map_in_processes, working_on

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


def _shard_stalling_once(task: ShardPlan) -> ShardResult:
    """`_process_shard`, except that the first try of shard train-000003 writes its process id
    and waits there, to be SIGKILLed from outside in the middle of its task."""
    marker = task.root.parent / "stalled-worker"
    if task.shard.name == "train-000003.tar" and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(DEADLINE_S)
    return _process_shard(task)


def _hang_slow_or_square(task):
    """("hang", fifo): a read that never returns (no writer opens the FIFO); ("slow", steps):
    a task that takes several deadlines but says each 0.2 s what it is on; n: n * n."""
    if isinstance(task, tuple) and task[0] == "hang":
        working_on("reading the fifo")
        return Path(task[1]).read_bytes()  # blocks in open(2), for ever
    if isinstance(task, tuple) and task[0] == "slow":
        for step in range(task[1]):
            working_on(f"step {step}")
            time.sleep(0.2)
        return "slow, but done"
    working_on(f"square {task}")
    return task * task


def test_a_stuck_task_is_killed_at_its_deadline_and_the_others_finish(tmp_path):
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    finished = []
    results = _in_thread(lambda: map_in_processes(
        _hang_slow_or_square, [1, ("hang", str(fifo)), ("slow", 12), 2, 3], workers=2,
        done=lambda: finished.append(1), deadline_s=1.0))
    assert results[1] == TimedOut(note="reading the fifo", seconds=1.0)
    # 2.4 s of work, more than twice the deadline: progress restarts it
    assert results[2] == "slow, but done"
    assert [results[0], *results[3:]] == [1, 4, 9] and len(finished) == 5
    assert _workers() == []  # the stuck one killed and reaped, the others stopped


def test_the_decode_deadline_is_a_validated_setting():
    assert load_config("tiny").data.ingest.decode_timeout_s > 60  # a slow real file never hits it
    with pytest.raises(ConfigError, match=r"data\.ingest\.decode_timeout_s=0.0 must be positive"):
        load_config("tiny", ["data.ingest.decode_timeout_s=0"])


OVERRIDES = ["data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=2",
             "data.ingest.media_per_shard=2"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """The generated raw layouts (UCF101: 40 videos), once for this module's ingests."""
    from vatt.data.synthetic import generate

    return generate(load_config("tiny", OVERRIDES), tmp_path_factory.mktemp("raw"),
                    progress=False)


def test_ingest_finishes_when_a_worker_is_killed_from_outside(tmp_path, monkeypatch, raw):
    """The synthetic UCF101 layout (40 videos, 20 shards), 2 workers, the one running shard
    train-000003 SIGKILLed by the test: the run completes (the killed task runs again in a
    fresh worker), with shards byte-identical to a run without the kill."""
    import vatt.data.ingest as ingest_module
    from vatt.data.ingest import ingest_index
    from vatt.data.sources import READERS

    cfg = load_config("tiny", OVERRIDES)

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


STUCK_MEDIA = "UCF-101/Bounce/v_Bounce_g02_c02.avi"  # a file of the generated UCF101 layout


class _DecoderStuckMidFile(MediaDecoder):
    """The real decoder, except that for one file it hangs in a read after its first piece (as
    on a network filesystem that stops answering): no writer ever opens the FIFO it reads."""

    def __init__(self, path, **kwargs):
        self.stuck = Path(path).as_posix().endswith(STUCK_MEDIA)
        self.fifo = Path(path).parents[3] / "never-written"
        super().__init__(path, **kwargs)

    def pieces(self):
        for n, piece in enumerate(super().pieces()):
            if self.stuck and n == 1:
                self.fifo.read_bytes()  # blocks for ever
            yield piece


def _shard_with_a_stuck_decode(task: ShardPlan) -> ShardResult:
    """`_process_shard` in a worker whose decoder hangs on STUCK_MEDIA."""
    import vatt.data.ingest as ingest_module

    ingest_module.MediaDecoder = _DecoderStuckMidFile  # in the worker process only
    return _process_shard(task)


def test_ingest_quarantines_a_stuck_decode_and_goes_on(tmp_path, monkeypatch, raw):
    """The synthetic UCF101 layout (40 videos, 2 per shard), 2 workers, one file's decode hangs
    in a read mid-file: its worker is killed at data.ingest.decode_timeout_s, the file is
    quarantined with a reason naming the setting, and every other file is ingested (the other
    file of its shard too)."""
    import vatt.data.ingest as ingest_module
    from vatt.data.ingest import ingest_index
    from vatt.data.sources import READERS

    cfg = load_config("tiny", [*OVERRIDES, "data.ingest.decode_timeout_s=2"])
    os.mkfifo(raw / "never-written")
    index = READERS["ucf101"](raw / "ucf101", cfg.data.ingest)
    media = sorted(item.media for item in index.items)
    assert STUCK_MEDIA in media, media[:3]
    monkeypatch.setattr(ingest_module, "_process_shard", _shard_with_a_stuck_decode)
    summary = _in_thread(lambda: ingest_index(cfg, index, raw / "ucf101", tmp_path / "out",
                                              "ucf101", progress=False))
    assert summary["quarantined"] == 1 and summary["clips"] == len(media) - 1 == 39
    report = json.loads((tmp_path / "out" / "ucf101" / "report.json").read_text())
    (entry,) = report["quarantined"]
    assert entry["item"] == STUCK_MEDIA and entry["kind"] == "media"
    assert "data.ingest.decode_timeout_s=2" in entry["reason"]
    assert "raise data.ingest.decode_timeout_s" in entry["reason"]
    manifest = json.loads((tmp_path / "out" / "ucf101" / "manifest.json").read_text())
    sources = {clip["media"] for clip in manifest["clips"]}
    assert sources == set(media) - {STUCK_MEDIA}
    assert not list((tmp_path / "out" / "ucf101" / "shards").glob("*.tmp"))
    assert _workers() == []
