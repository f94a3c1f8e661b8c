"""Loading a service's typed settings (pydantic-settings: --flag or env var),
with invalid values reported as one line per problem, never a traceback."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp

S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    pass


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = "--" + "-".join(str(p) for p in err.get("loc", ())).replace("_", "-")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def load_settings(cls: type[S], argv: list[str] | None = None) -> S:
    try:
        return CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None


def configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def wait_for_shutdown() -> None:
    """Block until SIGTERM or SIGINT."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
