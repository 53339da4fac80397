"""The process pool of the CPU-bound data work (ingest, the generated dataset).

`map_in_processes` never hangs on a worker that dies (killed from outside, out of memory, a
crash in a decoder). Each worker is a process of its own with its own pipe and runs one task at
a time; the parent waits (`multiprocessing.connection.wait`) on every worker's pipe and on its
process sentinel, so it sees a death the moment it happens and knows the one task that worker
held. That task runs once more in a fresh worker; if that one dies too, its result is a
`WorkerDied` and the other tasks are unaffected.

Why not a stock pool: `multiprocessing.Pool.imap` waits forever for the result of a task whose
worker is gone; `concurrent.futures.ProcessPoolExecutor` shares one call queue and one result
pipe, guarded by locks, among all workers, so a worker killed while it holds one breaks the
whole pool (every in-flight task fails, and a death during `submit` raised out of the ingest),
and it forks from a parent whose other threads may hold locks at that moment.

Workers start from the `forkserver`: a clean single-threaded process (started once per parent,
with the data modules and torch imported), not a fork of the parent and its threads, and a
worker holds no file descriptor but its own pipe's end, so a killed worker's pipe always reads
as closed. Ctrl-C and SIGTERM are handled once, by the parent (workers ignore SIGINT and end on
SIGTERM); on any exit of `map_in_processes` every worker is ended and reaped, and a worker whose
parent is gone ends by itself (its pipe closes). A forkserver that dies is started again.

Nor does it hang on a worker that is alive but stuck (a decoder in a loop, a read that never
returns), when given a deadline (`deadline_s`): a task calls `working_on(note)` as it goes (the
ingest: at each raw file and each decoded piece of it), which restarts its deadline and names
what it is on; a worker that passes its deadline without a word is killed, and the task's
result is a `TimedOut` with the last note (the stuck file), so the caller can quarantine that
and go on. A timed-out task is not run again (a stuck decode would be stuck again). Without a
deadline a task may take as long as it takes (the generated dataset: no outside input).
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional, Sequence

# imported once in the forkserver, so that each worker starts in milliseconds, not seconds
_PRELOAD = ["vatt.data.ingest", "vatt.data.synthetic", "torch", "torchaudio"]
_STOP_WAIT_S = 5.0  # how long a worker asked to stop may take before it is killed
_START_ATTEMPTS = 3  # a worker's start fails when the forkserver has just been killed
_PROGRESS_EVERY_S = 1.0  # a task's progress on the same note is sent at most this often
# what a worker sends: (task index, one of these, payload)
_PROGRESS, _DONE, _FAILED = "progress", "done", "failed"


@dataclass
class WorkerDied:
    """The result of a task whose worker process died twice running it."""

    reason: str


@dataclass
class TimedOut:
    """The result of a task whose worker went `seconds` without progress and was killed;
    `note`: what the task last said it was on (`working_on`), None if it never said."""

    note: Optional[str]
    seconds: float


class RemoteTraceback(Exception):
    """The traceback of an exception raised by a task in a worker (its `__cause__`)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


# in a worker, while it runs a task: its pipe, the task's index, the last note and when it was sent
_running: Optional[tuple[Connection, int]] = None
_last_progress: tuple[Optional[str], float] = (None, 0.0)


def working_on(note: str) -> None:
    """Called by a task as it goes: it is alive and on `note` (e.g. the file it decodes), which
    restarts its deadline. Cheap enough to call per decoded frame (the same note is sent at
    most once a second); outside a pool worker it does nothing."""
    global _last_progress
    if _running is None:
        return
    now = time.monotonic()
    if _last_progress[0] == note and now - _last_progress[1] < _PROGRESS_EVERY_S:
        return
    conn, index = _running
    try:
        conn.send((index, _PROGRESS, note))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone: the reply finds out
        return
    _last_progress = (note, now)


def _worker(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """A worker's life: receive (index, task), send (index, _DONE, result) or (index, _FAILED,
    (error, traceback)), with (index, _PROGRESS, note) while the task runs, until the parent
    sends None or its end of the pipe closes."""
    global _running, _last_progress
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent
    # no inherited handler (an orchestrator's, e.g. Prefect's, raises): a worker just ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        index, task = message
        _running, _last_progress = (conn, index), (None, 0.0)
        try:
            reply = (index, _DONE, fn(task))
        except BaseException as err:
            reply = (index, _FAILED, (err, traceback.format_exc()))
        finally:
            _running = None
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            # a result or exception that cannot travel: say so, with the original traceback
            failed = reply[1] == _FAILED
            text = reply[2][1] if failed else ""
            conn.send((index, _FAILED, (RuntimeError(
                f"the task's {'exception' if failed else 'result'} cannot be sent back from "
                f"the worker process ({type(err).__name__}: {err})"), text)))
        except (BrokenPipeError, ConnectionResetError):  # the parent is gone
            return


class _Worker:
    """One worker process, its end of the pipe, and the task it runs (None: idle)."""

    def __init__(self, context: Any, fn: Callable[[Any], Any]) -> None:
        for attempt in range(_START_ATTEMPTS):
            self.conn, child_end = context.Pipe(duplex=True)
            self.process = context.Process(target=_worker, args=(child_end, fn), daemon=True,
                                           name="vatt-data-worker")
            try:
                self.process.start()
                break
            except (EOFError, OSError) as err:
                # the forkserver died (killed); the next start launches a new one
                self.conn.close()
                if attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(
                        f"could not start a data worker process ({type(err).__name__}: {err}) "
                        f"in {_START_ATTEMPTS} tries: the multiprocessing forkserver keeps "
                        "dying; check the system's memory and process limits") from err
                time.sleep(0.2)
            finally:
                child_end.close()  # the worker's end lives in the worker alone: its death closes it
        self.index: Optional[int] = None
        self.note: Optional[str] = None  # what its task last said it was on
        self.heard = 0.0  # time.monotonic() when it was given its task or last sent progress

    def give(self, index: int, task: Any) -> bool:
        """Send it a task; False if it had died idle (the task was not started)."""
        try:
            self.conn.send((index, task))
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.index, self.note, self.heard = index, None, time.monotonic()
        return True

    def stop(self, graceful: bool) -> None:
        """End the process and reap it (asked to, or SIGTERM, then SIGKILL if it lingers)."""
        if graceful and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(_STOP_WAIT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


def _death(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    # takes effect only if the forkserver is not running yet (it is one per parent process)
    context.set_forkserver_preload(_PRELOAD)
    return context


def map_in_processes(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int,
                     done: Optional[Callable[[], None]] = None,
                     deadline_s: Optional[float] = None) -> list[Any]:
    """[fn(task) for task in tasks] in `workers` processes, in task order; `done()` after each
    finished task (a progress bar). `fn` must be importable by name (a module-level function).
    A task whose worker dies runs once more in a fresh worker; if that dies too, its result is
    a `WorkerDied`. With `deadline_s`, a task that goes that long without calling `working_on`
    has its worker killed and its result is a `TimedOut`. An exception raised by `fn`
    propagates (its traceback in the worker is its `__cause__`), after every worker has been
    stopped."""
    if workers < 1:
        raise ValueError(f"workers={workers}: a process pool needs at least 1 worker")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s={deadline_s}: a deadline must be positive (None: none)")
    context = _context()
    results: dict[int, Any] = {}
    deaths = [0] * len(tasks)
    queue = deque(range(len(tasks)))
    pool: list[_Worker] = []
    graceful = False
    try:
        while len(results) < len(tasks):
            while queue and len(pool) < workers:
                pool.append(_Worker(context, fn))
            for worker in pool:
                if worker.index is None and queue:
                    index = queue.popleft()
                    if not worker.give(index, tasks[index]):
                        queue.appendleft(index)  # its death is seen below, charged to no task
            timeout = None  # wait until a worker speaks or dies, or the first deadline
            if deadline_s is not None:
                heard = [w.heard for w in pool if w.index is not None]
                if heard:
                    timeout = max(0.0, min(heard) + deadline_s - time.monotonic())
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool],
                             timeout))
            for worker in list(pool):
                reply = None
                if worker.conn in ready:
                    try:
                        reply = worker.conn.recv()
                    except (EOFError, OSError):  # it died, mid-reply or idle
                        pass
                if reply is not None:
                    index, kind, value = reply
                    if kind == _PROGRESS:
                        worker.note, worker.heard = value, time.monotonic()
                        continue
                    worker.index = None
                    if kind == _FAILED:
                        error, text = value
                        raise error from RemoteTraceback(text)
                    results[index] = value
                    if done:
                        done()
                elif worker.conn in ready or worker.process.sentinel in ready:
                    worker.process.join(_STOP_WAIT_S)  # its exit code, for the reason
                    index, reason = worker.index, _death(worker.process)
                    pool.remove(worker)
                    worker.stop(graceful=False)
                    if index is None:
                        continue
                    deaths[index] += 1
                    if deaths[index] == 1:
                        queue.appendleft(index)  # once more, in a fresh worker
                        continue
                    results[index] = WorkerDied(
                        f"the worker process died running it, twice (last {reason}: killed, "
                        "out of memory, or a crash in a decoder)")
                    if done:
                        done()
                elif (deadline_s is not None and worker.index is not None
                      and time.monotonic() - worker.heard >= deadline_s
                      and not worker.conn.poll()):  # (a word since the wait: read it first)
                    # alive but stuck: killed (SIGTERM ends even a loop in C), not run again
                    index = worker.index
                    pool.remove(worker)
                    worker.stop(graceful=False)
                    results[index] = TimedOut(worker.note, deadline_s)
                    if done:
                        done()
        graceful = True
    finally:
        for worker in pool:
            worker.stop(graceful)
    return [results[index] for index in range(len(tasks))]


__all__ = ["map_in_processes", "working_on", "WorkerDied", "TimedOut", "RemoteTraceback"]
