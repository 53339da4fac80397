"""The process pool of the CPU-bound data work (ingest, the generated dataset)."""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.pool import Pool


def _default_signals() -> None:
    # a forked worker inherits the parent's SIGTERM handler (an orchestrator's, e.g. Prefect's,
    # which raises in the worker when the pool is closed); workers just end on SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent


def process_pool(workers: int) -> Pool:
    """A fork pool of `workers` processes with default signal handling."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals)
