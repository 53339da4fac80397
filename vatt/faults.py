"""Which failures are worth retrying.

A transient fault (a connection refused or reset, a timeout, an object store or API server
saying "slow down" or answering 5xx) may pass on its own; a permanent one (a bad config key,
missing data, wrong credentials, a missing bucket) will fail the same way again. Orchestration
retries the first kind only (flows/ declares it on its tasks); the library raises its own
errors with the cause chained, so the cause decides.
"""

from __future__ import annotations

import socket
from typing import Iterator, Optional

# S3 error codes and HTTP statuses that say "try again"
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                    "500", "502", "503", "504"}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# authentication and authorisation never heal by waiting
_PERMANENT = (PermissionError, FileNotFoundError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes and contexts (a library error raised `from None` still
    keeps the original as its context)."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith("botocore"):
        if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                    "ConnectTimeoutError", "ConnectionError", "ProxyConnectionError"):
            return True
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in _TRANSIENT_CODES
    if module.startswith(("urllib3", "requests", "httpx", "aiohttp")):
        return "Timeout" in name or "Connect" in name or "Protocol" in name
    if module.startswith("kubernetes") and name == "ApiException":
        return getattr(exc, "status", None) in _TRANSIENT_STATUS
    return False


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is a fault that may pass when retried."""
    chain = list(_chain(exc))
    if isinstance(chain[0], _PERMANENT) and not isinstance(chain[0], ConnectionError):
        return False
    return any(_is_transient_one(link) for link in chain)


__all__ = ["is_transient"]
