"""Bounds on the numbers and sizes read from raw annotations (the readers) and from ingested
clip records (the loader): one place, so a reader and the loader agree on what is sane.

A value outside its bound is an `OutOfBounds` error that names the field, the value, the
bound and where the value came from (a row, a clip); readers quarantine the row with it, the
loader stops with it. Numbers are checked before they size anything (a label list, a window
index), so a crafted value cannot make a list of a billion names or a window past any frame.
"""

from __future__ import annotations

import math
from typing import Any

MAX_MEDIA_SECONDS = 24 * 3600.0  # one raw file: the longest real ones (HowTo100M) last hours
MIN_FPS, MAX_FPS = 1.0, 1000.0  # a stored clip's frame rate (ingest writes data.fps)
MAX_CLIP_FRAMES = int(MAX_MEDIA_SECONDS * MAX_FPS)  # what any clip of a raw file can hold
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a larger class index is a broken row
MAX_FOLD = 10  # cross-validation folds (ESC-50: 1-5)
MAX_ROW_BYTES = 1 << 16  # one line of an annotation list (real rows are under 1 KB)
MAX_TEXT_CHARS = 10_000  # one caption or narration (real ones are a sentence or two)


class OutOfBounds(ValueError):
    """A number or size outside its bound; the message names field, value, bound and place."""


def number(value: Any, field: str, low: float, high: float, where: str,
           integer: bool = False) -> float | int:
    """`value` (a number, or text holding one) as a float (an int with `integer`) in
    [low, high]; OutOfBounds naming `field`, the value, the bound and `where` otherwise."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool):  # JSON true/false are no numbers, though Python says so
        raise OutOfBounds(f"{where}: {field}={value!r} is not {kind}")
    try:
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise OutOfBounds(f"{where}: {field}={_short(value)} is not {kind}") from None
    if integer and math.isfinite(parsed) and parsed != int(parsed):
        raise OutOfBounds(f"{where}: {field}={_short(value)} is not {kind}")
    if not (low <= parsed <= high):  # NaN fails this too
        raise OutOfBounds(f"{where}: {field}={_short(value)} is outside [{low:g}, {high:g}]")
    return int(parsed) if integer else parsed


def text(value: Any, field: str, where: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """`value` as a caption: a string of at most `max_chars` characters."""
    if not isinstance(value, str):
        raise OutOfBounds(f"{where}: {field} must be text, got {type(value).__name__} "
                          f"{_short(value)}")
    if len(value) > max_chars:
        raise OutOfBounds(f"{where}: {field} has {len(value)} characters, more than the "
                          f"{max_chars} a caption may have")
    return value


def _short(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


__all__ = ["OutOfBounds", "number", "text", "MAX_MEDIA_SECONDS", "MIN_FPS", "MAX_FPS",
           "MAX_CLIP_FRAMES", "MAX_CLASSES", "MAX_FOLD", "MAX_ROW_BYTES", "MAX_TEXT_CHARS"]
