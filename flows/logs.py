"""The library logs through `logging` (logger `vatt`); inside a flow or task run those records
also go to the run's logs in the Prefect API (what the UI shows), as Prefect does for its own
`extra_loggers`, and outside a run they are not sent anywhere by this handler."""

from __future__ import annotations

import logging


class _InRunOnly(logging.Filter):
    """Send to the API only from inside a flow or task run (elsewhere there is no run to
    attach the record to, and Prefect would warn on every line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def attach_library_logs() -> None:
    """Idempotent: the `vatt` logger at INFO, with Prefect's API handler, its records shown on
    Prefect's console (the root logger's handler) rather than a console of vatt's own."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

    from vatt.console import configure_console, use_root_console

    ensure_logging_setup()  # Prefect's console handler on the root logger

    logger = logging.getLogger("vatt")
    if not any(getattr(h, "vatt_prefect", False) for h in logger.handlers):
        handler = APILogHandler()
        handler.addFilter(_InRunOnly())
        handler.vatt_prefect = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    configure_console()
    if any(isinstance(h, PrefectConsoleHandler) for h in logging.getLogger().handlers):
        use_root_console()
