"""
Progress of a long sync: a bar on a terminal, rate / percent / heartbeat logs
everywhere else (seed 001: operators watched a silent sync and assumed a hang).

Percent is by time: Langfuse pages newest first, so how far back in the
window the last page reached is how far the run is.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from tqdm import tqdm

logger = logging.getLogger("billing.sync")

# At most one progress line this often, whatever the page rate (seed 001's
# review: logging every few completions slowed the run it measured).
LOG_INTERVAL_SECONDS = 10.0
# A quiet run (rate-limited, waiting on a slow page) still says it is alive.
HEARTBEAT_SECONDS = 30.0


class Progress:
    """Counts traces against a time window; subclasses decide how to show it."""

    def __init__(self, *, label: str, start: datetime, end: datetime) -> None:
        self.label = label
        self.start = start
        self.end = end
        self.traces = 0
        self.percent = 0.0
        self.began = time.monotonic()

    def advance(self, *, traces: int, position: datetime | None) -> None:
        self.traces += traces
        if position is not None:
            span = (self.end - self.start).total_seconds() or 1.0
            done = (self.end - position).total_seconds() / span
            self.percent = max(self.percent, min(100.0, 100.0 * done))

    @property
    def rate(self) -> float:
        return self.traces / max(time.monotonic() - self.began, 1e-9)

    def close(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogProgress(Progress):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._last_log = time.monotonic()
        self._last_change = time.monotonic()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)
        self._heartbeat.start()

    def advance(self, *, traces: int, position: datetime | None) -> None:
        super().advance(traces=traces, position=position)
        now = time.monotonic()
        self._last_change = now
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            self._last_log = now
            logger.info(
                "%s: %.0f%% of the window, %d traces, %.1f traces/s",
                self.label,
                self.percent,
                self.traces,
                self.rate,
            )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            quiet = time.monotonic() - self._last_change
            if quiet >= HEARTBEAT_SECONDS:
                logger.info(
                    "%s: still running, %.0f%% done, no new page for %.0f s",
                    self.label,
                    self.percent,
                    quiet,
                )

    def close(self) -> None:
        self._stop.set()


class BarProgress(Progress):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._bar = tqdm(
            total=100,
            desc=self.label,
            unit="%",
            bar_format=("{desc}: {percentage:3.0f}%|{bar}| {postfix}"),
        )

    def advance(self, *, traces: int, position: datetime | None) -> None:
        before = self.percent
        super().advance(traces=traces, position=position)
        self._bar.update(self.percent - before)
        self._bar.set_postfix_str(f"{self.traces} traces, {self.rate:.1f}/s")

    def close(self) -> None:
        self._bar.close()
