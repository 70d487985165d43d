"""Progress of a long loop on stderr: count/total, rate, elapsed time and ETA (process 0 only).

    for batch in progress.track(batches, total=n, desc="gen 1 (student) train", unit="steps"):
        ...

or `with Progress(total=n, desc=...) as bar: ... bar.update(k)`. In a terminal the line is redrawn
in place (\\r); elsewhere (a log file, a pipe, pytest) one plain line is printed every
`$MATCHME_PROGRESS_INTERVAL_S` seconds (default 30; "off": no progress at all), plus a final one.
The rate leaves out the first update, which usually pays for compilation ("-" until a second
one). Counting happens on the host: nothing here waits for a device.
"""

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator

from matchme_jax import parallel

INTERVAL_ENV = "MATCHME_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0
REDRAW_S = 0.2  # a terminal line is redrawn at most this often

_open_line = None  # the Progress whose line the terminal shows unterminated


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _interval_s(setting: str) -> float:
    if setting in ("", "off"):
        return DEFAULT_INTERVAL_S
    try:
        return float(setting)
    except ValueError:
        raise ValueError(f"${INTERVAL_ENV}={setting!r}: seconds between lines, or 'off'") from None


class Progress:
    """One loop's progress line; see the module docstring."""

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        interval_s: float | None = None,
    ):
        setting = os.environ.get(INTERVAL_ENV, "").strip().lower()
        self.enabled = parallel.is_main_process() and setting != "off"
        self.interval_s = interval_s if interval_s is not None else _interval_s(setting)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self._tty = self.enabled and getattr(sys.stderr, "isatty", lambda: False)()
        self._start = self._shown = time.monotonic()
        self._first = None  # (time, count) at the first update
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (now, self.n)
        if now - self._shown >= (REDRAW_S if self._tty else self.interval_s):
            self._show(now)

    def clear(self) -> None:
        """Erases this line from the terminal, before another line is printed there."""
        global _open_line
        if _open_line is self:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            _open_line = None
            self._shown = -math.inf  # redrawn at the next update

    def close(self) -> None:
        """Shows the final line (when anything was counted); a no-op the second time."""
        global _open_line
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._first is not None:
            self._show(time.monotonic())
            if _open_line is self:
                sys.stderr.write("\n")
                sys.stderr.flush()
                _open_line = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rate(self, now: float) -> float | None:
        """Counts per second since the first update; None before a second one."""
        if self._first is None or self.n == self._first[1] or now <= self._first[0]:
            return None
        t, n = self._first
        return (self.n - n) / (now - t)

    def line(self, now: float) -> str:
        rate = self.rate(now)
        count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        parts = [
            self.desc,
            count,
            f"{'-' if rate is None else f'{rate:.3g}'} {self.unit}/s",
            f"elapsed {_hms(now - self._start)}",
        ]
        if self.total is not None:
            left = max(self.total - self.n, 0)
            eta = left / rate if rate else (math.inf if left else 0.0)  # inf: "?"
            parts.append(f"ETA {_hms(eta)}")
        return "  ".join(p for p in parts if p)

    def _show(self, now: float) -> None:
        global _open_line
        self._shown = now
        if not self._tty:
            print(self.line(now), file=sys.stderr, flush=True)
            return
        if _open_line is not None and _open_line is not self:
            sys.stderr.write("\n")  # keep the other loop's line; ours goes below it
        sys.stderr.write("\r" + self.line(now) + "\x1b[K")
        sys.stderr.flush()
        _open_line = self


def track(iterable: Iterable, total: int | None = None, **kwargs) -> Iterator:
    """Yields the items of `iterable`, counting them in a `Progress(total, **kwargs)`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update()
