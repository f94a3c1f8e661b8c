"""common/settings.py: a service's settings from flags over environment over defaults, one
line per invalid value."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from pxo.common.settings import Settings, SettingsError, load_settings, setting


def _even(v: int) -> int:
    if v % 2:
        raise ValueError("must be even")
    return v


@dataclasses.dataclass(frozen=True)
class Demo(Settings):
    ENV_PREFIX: ClassVar[str] = "DEMO_"
    PROG: ClassVar[str] = "demo"

    name: str = setting("x", pattern=r"[a-z]+", help="a name")
    ratio: float = setting(0.5, gt=0, le=1, help="a ratio")
    count: int = setting(2, check=_even, help="an even count")
    on: bool = setting(True, help="a switch")
    mode: Literal["a", "b"] = setting("a", help="a choice")
    path: Path | None = setting(None, help="a path")
    items: list[str] = setting(default_factory=lambda: ["one"], help="a list")
    weights: dict[str, float] = setting(default_factory=dict, help="a mapping")

    def validate(self) -> None:
        if self.mode == "b" and not self.on:
            raise ValueError("mode b needs --on")


def test_defaults_then_environment_then_flags() -> None:
    assert load_settings(Demo, [], {}) == Demo()
    env = {"DEMO_RATIO": "0.25", "DEMO_ON": "false", "DEMO_ITEMS": '["p", "q"]', "DEMO_PATH": "/tmp/x"}
    s = load_settings(Demo, ["--ratio", "1", "--weights", '{"a": 2}'], env)
    assert (s.ratio, s.on, s.items, s.path, s.weights) == (1.0, False, ["p", "q"], Path("/tmp/x"), {"a": 2.0})
    assert load_settings(Demo, ["--on"], {"DEMO_ON": "0"}).on is True
    assert load_settings(Demo, ["--no-on"], {}).on is False


def test_lists_as_json_commas_or_repeated_flags() -> None:
    assert load_settings(Demo, ["--items", "a,b", "--items", '["c"]'], {}).items == ["a", "b", "c"]
    assert load_settings(Demo, ["--items", "[]"], {}).items == []
    assert load_settings(Demo, ["--path", ""], {}).path is None


def test_every_invalid_value_is_one_line_naming_its_flag() -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(Demo, ["--name", "X1", "--ratio", "0", "--count", "3", "--mode", "c"], {"DEMO_ON": "maybe"})
    assert str(exc.value) == ("--name: must match [a-z]+; --ratio: must be greater than 0; --count: must be even; "
                              "--on: must be true or false; --mode: must be one of a, b")
    with pytest.raises(SettingsError, match="--weights: expected a JSON object"):
        load_settings(Demo, ["--weights", "[1]"], {})
    with pytest.raises(SettingsError, match="--count: must be a whole number, not 'two'"):
        load_settings(Demo, [], {"DEMO_COUNT": "two"})


def test_unknown_flags_and_checks_across_fields() -> None:
    with pytest.raises(SettingsError, match="unrecognized arguments: --colour"):
        load_settings(Demo, ["--colour", "red"], {})
    with pytest.raises(SettingsError, match=r"^mode b needs --on$"):
        load_settings(Demo, ["--mode", "b", "--no-on"], {})


def test_addresses_of_all_three_services_are_checked_alike() -> None:
    """One host:port check (common/addr.hostport_check) behind every address setting."""
    from pxo.cloud.settings import CloudSettings
    from pxo.collector.main import CollectorSettings
    from pxo.edge.main import EdgeSettings

    for cls, name in ((EdgeSettings, "--listen"), (EdgeSettings, "--collector"), (EdgeSettings, "--metrics"),
                      (CollectorSettings, "--listen"), (CollectorSettings, "--health-listen"),
                      (CloudSettings, "--collector")):
        with pytest.raises(SettingsError) as err:
            load_settings(cls, [name, "no-port"], {})
        assert name in str(err.value) and "'no-port' is not host:port" in str(err.value), (cls.__name__, err.value)
    assert load_settings(EdgeSettings, ["--metrics", "", "--collector", "[::1]:50700"], {}).metrics == ""
    with pytest.raises(SettingsError, match="--listen"):  # a server needs somewhere to listen
        load_settings(CollectorSettings, ["--listen", ""], {})
