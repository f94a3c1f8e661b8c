"""Rendering answers: aligned tables that fit the terminal (records, one field
a line, when a row is too wide), or JSON and CSV for scripts.

In tables, byte columns (``*_bytes``) are human-readable and times are shown
to the second; JSON and CSV carry raw values.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Sequence
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_duration(seconds: float) -> str:
    """An uptime as people say it: 45s, 12m, 3h 5m, 2d 4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


class Styled:
    """A cell made of (text, colour) segments: the table pads its plain text, then colours
    each segment (colour "" for none), so styling never moves a column and never touches
    text that only looks like a state word."""

    def __init__(self, *segments: tuple[str, str]) -> None:
        self.segments = segments

    def __str__(self) -> str:
        return "".join(text for text, _ in self.segments)

    def render(self, enabled: bool) -> str:
        return "".join(paint(text, colour, enabled) for text, colour in self.segments)


def state(word: str) -> Styled:
    """A state word (live, running, failed...) in its colour."""
    return Styled((word, STATE_COLOURS.get(word, "")))


def cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Styled):
        return str(value)
    if name.endswith("_bytes") and isinstance(value, (int, float)):
        return human_bytes(value)
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        return value[:19].replace("T", " ")  # an ISO timestamp, shown to the second
    if isinstance(value, float):
        if 1e6 <= abs(value) < 1e15:  # a large measure (a sketch's p99 of bytes): digits, not 7.18832e+07
            return f"{value:.0f}"
        return f"{value:.6g}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None,
          shorten_last: bool = False, colour: bool = False) -> str:
    """``shorten_last``: a prose last column (descriptions) is cut to fit, ending in '…'.
    ``colour``: a bold header and coloured states (see ``styled``), added to each cell after
    it is padded, so alignment never depends on escape codes."""
    width = width or shutil.get_terminal_size((80, 24)).columns
    text = [[cell(c, v) for c, v in zip(columns, r, strict=True)] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    room = width - sum(widths[:-1]) - 2 * (len(columns) - 1)
    if shorten_last and widths and widths[-1] > room >= 20:
        for r in text:
            if len(r[-1]) > room:
                r[-1] = r[-1][:room - 1] + "…"
        widths[-1] = room
    if sum(widths) + 2 * (len(columns) - 1) > width and len(columns) > 1:
        return records(columns, text, raw=rows, colour=colour)
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    lines = [paint(header, "bold", colour)]
    for raw, r in zip(rows, text, strict=True):
        cells = [_styled(v, t, colour) + " " * (w - len(t)) for v, t, w in zip(raw, r, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _styled(value: Any, text: str, colour: bool) -> str:
    return value.render(colour) if isinstance(value, Styled) and text == str(value) else text


def records(columns: Sequence[str], text_rows: Sequence[Sequence[str]], *,
            raw: Sequence[Sequence[Any]] | None = None, colour: bool = False) -> str:
    """psql's expanded display: one block per row, one field per line."""
    key_w = max(len(c) for c in columns)
    blocks = []
    for i, r in enumerate(text_rows, 1):
        values = raw[i - 1] if raw is not None else r
        lines = [f"-[ row {i} ]" + "-" * max(0, key_w - 4)]
        lines += [f"{c.ljust(key_w)} | {_styled(v, t, colour)}" for c, v, t in zip(columns, values, r, strict=True)]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def as_json(body: Any) -> str:
    return json.dumps(body, indent=2)


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue().rstrip("\n")


class FollowTable:
    """Rows printed as they arrive (``pxo query --follow``): the header once, then each row
    aligned to the widest value seen so far in its column (a wider value later widens the
    column from then on: the best a stream can do without holding rows back)."""

    def __init__(self, columns: Sequence[str], *, width: int | None = None) -> None:
        self.columns = list(columns)
        self.widths = [len(c) for c in self.columns]
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        self.header_done = False

    def lines(self, rows: Sequence[Sequence[Any]]) -> list[str]:
        text = [[cell(c, v) for c, v in zip(self.columns, r, strict=True)] for r in rows]
        out = []
        if not self.header_done:  # the first rows set the widths the header is drawn at
            for r in text:
                self.widths = [max(w, len(v)) for w, v in zip(self.widths, r, strict=True)]
            out.append("  ".join(c.upper().ljust(w) for c, w in zip(self.columns, self.widths, strict=True))
                       .rstrip())
            self.header_done = True
        for r in text:
            self.widths = [max(w, len(v)) for w, v in zip(self.widths, r, strict=True)]
            out.append("  ".join(v.ljust(w) for v, w in zip(r, self.widths, strict=True)).rstrip())
        return out


def csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


# -- colour and progress ---------------------------------------------------------

_COLOURS = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}
STATE_COLOURS = {"ok": "green", "live": "green", "running": "green", "down": "red", "failed": "red",
                 "timed_out": "red", "degraded": "yellow", "skipped": "dim", "stopped": "yellow"}


def use_colour(stream: Any, *, disabled: bool = False) -> bool:
    """Colour only on a terminal, and never with --no-color or NO_COLOR (https://no-color.org)."""
    import os

    if disabled or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def paint(text: str, colour: str, enabled: bool) -> str:
    code = _COLOURS.get(colour)
    return f"\033[{code}m{text}\033[0m" if enabled and code else text


class Progress:
    """A spinner with elapsed seconds on stderr while slow work runs; only on a terminal,
    and only once the work has taken longer than ``after`` seconds."""

    def __init__(self, message: str, *, stream: Any = None, after: float = 0.5) -> None:
        import sys

        self.message = message
        self.stream = stream or sys.stderr
        self.after = after
        self._stop: Any = None
        self._thread: Any = None

    def __enter__(self) -> Progress:
        import threading

        if not getattr(self.stream, "isatty", lambda: False)():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        start = time.monotonic()
        frames = "|/-\\"
        i = 0
        if self._stop.wait(self.after):
            return
        while not self._stop.wait(0.1):
            self.stream.write(f"\r{frames[i % 4]} {self.message} {time.monotonic() - start:.1f} s")
            self.stream.flush()
            i += 1
        self.stream.write("\r\033[K")
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
