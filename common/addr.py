"""host:port parsing and the address file a server writes once it listens.

Servers may be told to listen on port 0 (tests, local deployments with no
fixed ports); they write the address they really bound to ``<name>.addr`` in
their data directory, which is how a parent process learns it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def split_hostport(text: str, *, what: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r} is not host:port (e.g. 127.0.0.1:50700)")
    return host.strip("[]"), int(port)


def hostport_check(*, what: str = "address", optional: bool = False) -> Callable[[str], str]:
    """A settings ``check=``: the value is host:port (or, when ``optional``, empty: off)."""

    def check(value: str) -> str:
        if value or not optional:
            split_hostport(value, what=what)
        return value

    return check


def write_addr_file(path: Path, address: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)  # readers never see a half-written file


def read_addr_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None
