"""The process pool of the CPU-bound data work (ingest, the generated dataset).

`map_in_processes` never hangs on a worker that dies (killed, out of memory, a crash in a
decoder): `multiprocessing.Pool.imap` waits forever for the result of a task whose worker is
gone, while a `concurrent.futures` pool reports it (BrokenProcessPool). The tasks that were in
flight when it broke are run again, each in a pool of its own, so that the one that kills its
worker is found and reported as `WorkerDied` for that task alone.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


def _default_signals() -> None:
    # a forked worker inherits the parent's SIGTERM handler (an orchestrator's, e.g. Prefect's,
    # which raises in the worker when the pool is closed); workers just end on SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent


@dataclass
class WorkerDied:
    """The result of a task whose worker process died twice running it."""

    reason: str


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_default_signals)


def map_in_processes(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int,
                     done: Optional[Callable[[], None]] = None) -> list[Any]:
    """[fn(task) for task in tasks] in `workers` processes, in task order; `done()` after each
    finished task (a progress bar). A task whose worker dies is retried alone; if its worker
    dies again its result is a `WorkerDied`. Exceptions raised by `fn` propagate."""
    results: dict[int, Any] = {}
    broken: list[int] = []
    with _pool(workers) as pool:
        futures = {pool.submit(fn, task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                broken.append(index)
                continue
            if done:
                done()
    for index in sorted(broken):  # alone, so that a death is the task's own
        with _pool(1) as single:
            try:
                results[index] = single.submit(fn, tasks[index]).result()
            except BrokenProcessPool:
                results[index] = WorkerDied("the worker process died running it, twice (killed, "
                                            "out of memory, or a crash in a decoder)")
        if done:
            done()
    return [results[index] for index in range(len(tasks))]


__all__ = ["map_in_processes", "WorkerDied"]
