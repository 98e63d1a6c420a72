"""Progress a person can follow: bars and live tables at a terminal, plain lines anywhere else.

One choice per process, `progress_mode()`:

- `bars` (stdout and stderr both a terminal): a tqdm bar for fine-tuning and for each evaluation on the driver; on
  the Ray Train workers rank 0 draws its bar with Ray's `tqdm_ray`, which sends the bar's state through the
  worker's log to the driver, whose log monitor draws it there without mixing it into other lines; sweeps and
  streams get a rich live table at the bottom of the terminal, the lines printed meanwhile scrolling above it.
- `lines` (otherwise: a pipe, a log file, CI, `ray job submit`, pytest's capture): no carriage returns, one line per
  epoch, per evaluation, per finished trial, per request. `tqdm_ray` is not used then: its driver side draws
  ordinary tqdm bars, carriage returns and all, into whatever stderr is.
- `off`: none of the above; the few lines that name a stage or a result stay.

`RAY_UNLEARN_PROGRESS=bars|lines|off` overrides the choice. Bars and tables are redrawn at most twice a second and
a finished bar leaves one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping

from orchestrator.observe.metrics import finite_number

Progress = Callable[[str], None]  # where a driver's one-line messages go (print, a logger, a test's list)
MODE_ENV = "RAY_UNLEARN_PROGRESS"
MODES = ("bars", "lines", "off")
REFRESH_PER_SECOND = 2

Emit = Callable[[str], None]


def progress_mode(environ: Mapping[str, str] | None = None, streams: tuple[Any, ...] | None = None) -> str:
    """`bars`, `lines` or `off`: the override in `RAY_UNLEARN_PROGRESS`, else `bars` only at an interactive terminal."""
    environ = os.environ if environ is None else environ
    value = environ.get(MODE_ENV, "").strip().lower()
    if value:
        return _checked(value, MODE_ENV)
    # Both: results go to stdout and progress to stderr, and either redirected to a file would catch the bars.
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    interactive = all(_isatty(s) for s in streams) and environ.get("TERM") != "dumb"
    return "bars" if interactive else "lines"


def _checked(mode: str, where: str = "progress mode") -> str:
    if mode not in MODES:
        raise ValueError(f"{where}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class Steps:
    """A counted piece of work (fine-tuning or unlearning steps, evaluation passes), shown as `mode` says.

    bars: one bar (on a Ray worker `tqdm_ray`'s), whose description says where it is (`describe`), left as one
    line by `close`. lines: nothing while it runs; `line(message)` goes to `emit` (the caller decides how often:
    once per epoch) and `close(summary)` emits `label: summary`. off: nothing at all.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "step", initial: int = 0,
                 mode: str | None = None, emit: Emit | None = None, on_worker: bool = False) -> None:
        self.label, self.emit = label, emit
        self.mode = _checked(mode) if mode else progress_mode()
        self.on_worker = on_worker
        self.n = initial
        self.started = time.perf_counter()
        self._bar: Any = None
        if self.mode == "bars":
            self._bar = _worker_bar(label, total, unit, initial) if on_worker else _driver_bar(label, total, unit,
                                                                                                initial)

    def set_total(self, total: int) -> None:
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        """What the bar shows beside the count (epoch, loss); lines mode has its `line` for that."""
        if self._bar is None:
            return
        if self.on_worker:  # tqdm_ray sends only the description
            self._bar.set_description(f"{self.label} {text}")
        else:
            self._bar.set_postfix_str(text, refresh=False)

    def line(self, message: str) -> None:
        if self.mode == "lines" and self.emit is not None:
            self.emit(message)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Let other code print whole lines while the driver's bar is drawn (tqdm clears it and redraws it)."""
        if self._bar is None or self.on_worker:  # a worker's lines reach the driver, which hides its bars itself
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def close(self, summary: str | None = None) -> None:
        if self._bar is not None:
            if summary:
                self.describe(summary)
            self._bar.close()
            self._bar = None
        elif summary:
            self.line(f"{self.label}: {summary}")


def _driver_bar(label: str, total: int | None, unit: str, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit=unit, file=sys.stderr, leave=True,
                dynamic_ncols=True, mininterval=1 / REFRESH_PER_SECOND)


def _worker_bar(label: str, total: int | None, unit: str, initial: int):
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=label, total=total, unit=unit, flush_interval_s=1 / REFRESH_PER_SECOND)
    bar.n = initial
    return bar


class LiveTable:
    """A rich live table at the bottom of the terminal while the `with` block runs, in bars mode only.

    `render` is called at most twice a second from rich's refresh thread (it must only read). Lines printed to
    stdout or stderr meanwhile (by this process, or Ray's log monitor for the workers) appear above the table; at
    the end the last table stays, once.
    """

    def __init__(self, render: Callable[[], Any], mode: str | None = None) -> None:
        self.render, self.mode = render, mode or progress_mode()
        self._live: Any = None

    def __enter__(self) -> "LiveTable":
        if self.mode == "bars":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=Console(stderr=True),
                              refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def facts_table(title: str, rows: list[tuple[str, str]]):
    """A live table's look: a title, then one row per kind of fact (`trials`, `latency`, ...), a few lines high and
    narrow enough for an 80-column terminal."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    return table


def render_text(renderable: Any, width: int = 100) -> str:
    """A rich renderable as the terminal would show it (with colour codes): for tests and logs."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, width=width).print(renderable)
    return buffer.getvalue()


def figure(value: Any) -> str:
    """A metric for a table cell or a line: `0.418`, or `-` when there is none (None, NaN, infinite)."""
    return f"{value:.3f}" if finite_number(value) else "-"


def seconds(value: float | None) -> str:
    """`12.3 s`, `4 min 05 s`, `1 h 02 min`: durations for a table cell."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
