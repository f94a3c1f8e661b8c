"""A service's typed settings: each field is a --flag or an environment variable (the flag wins),
declared once as a dataclass field with its help text and bounds; invalid values are reported as one
line per problem, never a traceback.

Why not pydantic-settings: importing it (and pydantic) costs a process about 10 MiB resident and
60 ms, and the edge, which runs on every node, has no other use for pydantic. This is what the
three services need of it, in one place:

- ``--kebab-case`` flags from field names; booleans as ``--x`` / ``--no-x``;
- ``<PREFIX><NAME>`` environment variables (``PXO_EDGE_DATA_DIR``);
- lists as JSON (``'["oom", "procfs"]'``) or comma-separated, repeated flags adding up;
  mappings as JSON; ``Literal`` choices; ``X | None`` (empty: None);
- bounds (``gt``, ``ge``, ``le``), a ``pattern``, a per-field ``check`` and a class-wide ``validate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

S = TypeVar("S", bound="Settings")


class SettingsError(Exception):
    pass


def setting(default: Any = dataclasses.MISSING, *, help: str, default_factory: Callable[[], Any] | None = None,
            gt: float | None = None, ge: float | None = None, le: float | None = None, pattern: str | None = None,
            check: Callable[[Any], Any] | None = None) -> Any:
    """A settings field: its default (or ``default_factory``), help text, bounds and an extra check
    (a callable raising ValueError with the message to show)."""
    meta = {"help": help, "gt": gt, "ge": ge, "le": le, "pattern": pattern, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of a service's settings; a subclass sets ENV_PREFIX and PROG and is a frozen dataclass."""

    ENV_PREFIX: ClassVar[str] = "PXO_"
    PROG: ClassVar[str] = "pxo"

    def validate(self) -> None:
        """Checks across fields: raise ValueError with the message (a subclass extends this)."""


def setting_names(cls: type[Settings]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise SettingsError(message)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(texts: list[str], tp: Any) -> Any:
    """The value of a setting given as text (once, or several times for a list)."""
    tp, optional = _unwrap_optional(tp)
    text = texts[-1]
    if optional and text == "":
        return None
    origin = typing.get_origin(tp)
    if origin is list:
        out: list[Any] = []
        for t in texts:
            t = t.strip()
            if t.startswith("["):
                items = json.loads(t)
                if not isinstance(items, list):
                    raise ValueError("expected a JSON list or comma-separated values")
            else:
                items = [p.strip() for p in t.split(",") if p.strip()]
            out.extend(_convert([str(i)], typing.get_args(tp)[0]) for i in items)
        return out
    if origin is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object, e.g. {"name": 1}')
        kt, vt = typing.get_args(tp)
        return {_convert([str(k)], kt): _convert([str(v)], vt) for k, v in value.items()}
    if origin is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return text
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("must be true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, not {text!r}") from None
    if tp is Path:
        return Path(text)
    return text


def _bounds(value: Any, meta: Mapping[str, Any]) -> None:
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise ValueError(f"must be greater than {meta['gt']:g}")
    if meta.get("ge") is not None and not value >= meta["ge"]:
        raise ValueError(f"must be at least {meta['ge']:g}")
    if meta.get("le") is not None and not value <= meta["le"]:
        raise ValueError(f"must be at most {meta['le']:g}")
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
        raise ValueError(f"must match {meta['pattern']}")


def parser(cls: type[Settings]) -> argparse.ArgumentParser:
    """The command line of ``cls``: every field a flag; its help says the variable too."""
    ap = _Parser(prog=cls.PROG, description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        env = cls.ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, "") else f" (default: {default})"
        text = f"{f.metadata.get('help', '')}{shown} [env {env}]".replace("%", "%%")
        if tp is bool:
            ap.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                            default=argparse.SUPPRESS, help=text)
        else:
            ap.add_argument(flag(f.name), dest=f.name, action="append", default=argparse.SUPPRESS, help=text,
                            metavar=f.name.upper())
    return ap


def load_settings(cls: type[S], argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> S:
    """``cls`` from the command line (``argv``, default sys.argv[1:]) over the environment over the
    defaults; SettingsError with one ``--flag: problem`` per invalid value."""
    env = os.environ if environ is None else environ
    given = vars(parser(cls).parse_args(sys.argv[1:] if argv is None else argv))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):
        try:
            if f.name in given:
                raw = given[f.name]
                value = raw if isinstance(raw, bool) else _convert(raw, hints[f.name])
            elif cls.ENV_PREFIX + f.name.upper() in env:
                value = _convert([env[cls.ENV_PREFIX + f.name.upper()]], hints[f.name])
            else:
                continue
            if value is not None:
                _bounds(value, f.metadata)
            if f.metadata.get("check") is not None:
                value = f.metadata["check"](value)
            values[f.name] = value
        except (ValueError, json.JSONDecodeError) as exc:
            problems.append(f"{flag(f.name)}: {exc}")
    if problems:
        raise SettingsError("; ".join(problems))
    settings = cls(**values)
    try:
        settings.validate()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


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
