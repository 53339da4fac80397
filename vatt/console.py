"""What a person sees: the library logs through `logging` (logger `vatt.*`), and Ray's own
output goes to log files unless asked for.

    configure_console()          # the CLI: vatt.* INFO lines on stderr
    init_ray()                   # ray.init() with Ray's chatter kept out of the console

Verbosity is one switch, `VATT_VERBOSE=1` (the CLI's `--verbose` sets it, so served flow runs
and Ray workers started from it see it too): Ray's worker output, Ray Data's progress bars and
Ray's driver-side warnings then come to the console as Ray prints them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

VERBOSE_ENV = "VATT_VERBOSE"
PROGRESS_ATTR = "vatt_progress"  # LogRecord attribute of a training-progress line
RAY_LOGGERS = ("ray", "ray.train", "ray.data", "ray.tune")

log = logging.getLogger("vatt")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    os.environ[VERBOSE_ENV] = "1" if on else "0"


class _HideProgress(logging.Filter):
    """Drops progress lines from a console that shows a progress bar instead."""

    def __init__(self) -> None:
        super().__init__()
        self.bar_active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.bar_active and getattr(record, PROGRESS_ATTR, False))


_console_filter = _HideProgress()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (a test's capture, a
    redirected stream), not the one there when the handler was made."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console_filter() -> _HideProgress:
    """The filter of the console handler; a progress bar sets `bar_active` while it shows."""
    return _console_filter


def console_active() -> bool:
    """True when vatt's own console handler shows vatt.* records (and so can be told to hide
    progress lines while a progress bar shows them)."""
    return any(getattr(h, "vatt_console", False) for h in log.handlers)


def use_root_console() -> None:
    """Inside an orchestrator that owns the console (Prefect's handler on the root logger),
    vatt.* records propagate to it instead of being printed a second time by vatt's own."""
    for handler in [h for h in log.handlers if getattr(h, "vatt_console", False)]:
        log.removeHandler(handler)
    log.propagate = True


def configure_console(level: int = logging.INFO) -> None:
    """vatt.* records at `level` on stderr as plain lines (idempotent)."""
    log.setLevel(level)
    if not console_active():
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_console_filter)
        handler.vatt_console = True  # type: ignore[attr-defined]
        log.addHandler(handler)


def ray_log_file() -> Path:
    """Where Ray's driver-side messages go when they are kept off the console."""
    folder = Path(os.environ.get("VATT_LOG_DIR", "artifacts/logs"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve() / "ray-driver.log"


def _route_ray_loggers_to_file() -> Optional[Path]:
    """Ray installs a stderr handler on its loggers at import; move them to a file."""
    if verbose():
        return None
    path = ray_log_file()
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            logger.addHandler(file_handler)
        logger.propagate = False
    return path


def quiet_ray_data() -> None:
    """No Ray Data progress bars in this process's datasets unless verbose (the context is
    copied into each dataset when it is built, so this runs before building one)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose()
    context.print_on_execution_start = verbose()


def init_ray(**kwargs) -> str:
    """Connect to the Ray of this process, the cluster at RAY_ADDRESS, or start a local Ray;
    returns where. Workers' stdout/stderr stay in Ray's session logs unless verbose."""
    import ray

    _route_ray_loggers_to_file()
    quiet_ray_data()
    address = os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        kwargs.setdefault("log_to_driver", verbose())
        kwargs.setdefault("logging_level", logging.INFO if verbose() else logging.WARNING)
        kwargs.setdefault("include_dashboard", False)
        ray.init(address=address, **kwargs)
        _route_ray_loggers_to_file()  # ray.init may have re-installed its handlers
        if not verbose():
            log.info("Ray: %s; its logs: %s (VATT_VERBOSE=1 or --verbose shows them here)",
                     address or "a local Ray for this process",
                     ray.get_runtime_context().gcs_address and _session_logs())
    return address or "the local Ray of this process"


def _session_logs() -> str:
    try:
        import ray

        return str(Path(ray._private.worker._global_node.get_logs_dir_path()))  # noqa: SLF001
    except Exception:  # noqa: BLE001 - only used for the hint; connected clusters have none here
        return "the Ray session folder"


__all__ = ["configure_console", "console_active", "use_root_console", "init_ray", "quiet_ray_data", "verbose", "set_verbose",
           "console_filter", "PROGRESS_ATTR", "VERBOSE_ENV"]
