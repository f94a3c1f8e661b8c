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


def cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_bytes") and isinstance(value, (int, float)):
        return human_bytes(value)
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        return value[:19].replace("T", " ")  # an ISO timestamp, shown to the second
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((80, 24)).columns
    text = [[cell(c, v) for c, v in zip(columns, r, strict=True)] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    if sum(widths) + 2 * (len(columns) - 1) > width and len(columns) > 1:
        return records(columns, text)
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for r in text:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def records(columns: Sequence[str], text_rows: Sequence[Sequence[str]]) -> str:
    """psql's expanded display: one block per row, one field per line."""
    key_w = max(len(c) for c in columns)
    blocks = []
    for i, r in enumerate(text_rows, 1):
        lines = [f"-[ row {i} ]" + "-" * max(0, key_w - 4)]
        lines += [f"{c.ljust(key_w)} | {v}" for c, v in zip(columns, r, strict=True)]
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
