"""One training progress line on the driver, fed by the rows the workers report.

Ray Train runs the loop in worker actors and calls its callbacks in the controller actor; the
driver sees nothing until `fit()` returns. `ProgressFeed` closes that gap: a Ray Train
`UserCallback` (in the controller) puts each reported row into a `ray.util.queue.Queue`, and a
thread of the driver turns the rows into one line, "step 120/300 (40%) loss 4.12 (video-audio
2.01, video-text 2.11) 61 clips/s, 2m55s left", logged through `vatt.train` (so it reaches the
CLI's console, log files and Prefect's run logs) and drawn as a progress bar on a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from typing import Any, Optional

from vatt.console import PROGRESS_ATTR, console_active, console_filter

log = logging.getLogger("vatt.train")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class ProgressLine:
    """Turns reported rows into progress lines; knows the total and the pace so far."""

    def __init__(self, total_steps: int, run_name: str):
        self.total = total_steps
        self.run_name = run_name
        self.first: Optional[tuple[int, float]] = None  # (step, time) of the first row seen
        self.last_step = 0

    def line(self, row: dict[str, Any], now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        step = int(row["step"])
        if self.first is None:
            # the pace is measured from the first row: before it are start-up and any resume
            self.first = (step, now)
        self.last_step = step
        text = (f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%) "
                f"loss {row['loss_total']:.3f} (video-audio {row['loss_video_audio']:.3f}, "
                f"video-text {row['loss_video_text']:.3f}) {row.get('clips_per_s', 0):.0f} clips/s")
        if "val_MRR" in row:
            text += f", val MRR {row['val_MRR']:.3f}"
        first_step, first_time = self.first
        if step > first_step and step < self.total:
            per_step = (now - first_time) / (step - first_step)
            text += f", {format_duration(per_step * (self.total - step))} left"
        return text


def _make_callback(queue: Any):
    from ray.train import UserCallback

    class ForwardRows(UserCallback):
        """Runs in the Ray Train controller: forwards rank 0's rows to the driver's queue."""

        def __init__(self, queue: Any):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if metrics:
                try:
                    self.queue.put_nowait(dict(metrics[0]))
                except Exception:  # noqa: BLE001 - a full or gone queue must not stop training
                    pass

    return ForwardRows(queue)


class ProgressFeed:
    """Context manager around `TrainerX.fit()`: `callback` goes into the RunConfig's callbacks.

        with ProgressFeed(total_steps, run_name) as feed:
            trainer = build_trainer(..., callbacks=[feed.callback]); trainer.fit()
    """

    def __init__(self, total_steps: int, run_name: str, bar: Optional[bool] = None):
        from ray.util.queue import Queue

        self.progress = ProgressLine(total_steps, run_name)
        self.queue = Queue(maxsize=10_000)
        self.callback = _make_callback(self.queue)
        # a bar only on a terminal, and only where vatt's console can hide the same lines
        self.bar_wanted = (sys.stderr.isatty() and console_active()) if bar is None else bar
        self._stop = threading.Event()
        # the caller's context goes along (e.g. an orchestrator's run context, which its log
        # handlers read to file the lines under the right run)
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._follow,), name="vatt-progress", daemon=True)
        self._bar = None

    def __enter__(self) -> "ProgressFeed":
        if self.bar_wanted:
            from tqdm import tqdm

            self._bar = tqdm(total=self.progress.total, desc=f"pretrain {self.progress.run_name}",
                             unit="step", dynamic_ncols=True, file=sys.stderr)
            console_filter().bar_active = True
        self._thread.start()
        return self

    def _show(self, row: dict[str, Any]) -> None:
        text = self.progress.line(row)
        if row.get("attempt") and self.progress.first and self.progress.first[0] == row["step"]:
            log.info("resumed run %s from its checkpoint (attempt %s)", self.progress.run_name,
                     row["attempt"])
        log.info(text, extra={PROGRESS_ATTR: True})
        if self._bar is not None:
            self._bar.n = int(row["step"])
            self._bar.set_postfix_str(text.split(") ", 1)[-1], refresh=True)

    def _follow(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                row = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor went away with Ray
                return
            self._show(row)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._bar is not None:
            self._bar.close()
            console_filter().bar_active = False
        try:
            import ray

            ray.kill(self.queue.actor)
        except Exception:  # noqa: BLE001 - Ray already shut down
            pass


__all__ = ["ProgressFeed", "ProgressLine", "format_duration"]
