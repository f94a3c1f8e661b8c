"""The pxo CLI as a user runs it: a subprocess against a real cloud."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from pxo.cli import output
from pxo.cli.config import Config
from tests.helpers.cli import pxo
from tests.helpers.services import Stack


def api_env(stack: Stack, tmp: Path) -> dict[str, str]:
    return {"PXO_API_URL": stack.url, "PXO_API_KEY": stack.key, "XDG_CONFIG_HOME": str(tmp / "cfg")}


def test_query_table_json_csv(stack: Stack, tmp_path: Path) -> None:
    env = api_env(stack, tmp_path)
    r = pxo("query", "oom_events | last 1h", env=env)
    assert r.returncode == 0, r.stderr
    assert "proc101" in r.stdout and "512.0 MiB" in r.stdout  # bytes are human-readable in tables
    r = pxo("query", "oom_events | last 1h", "-o", "json", env=env)
    body = json.loads(r.stdout)
    assert sorted(row[2] for row in body["rows"]) == [101, 102]
    r = pxo("query", "SELECT pid, anon_rss_bytes FROM oom_events ORDER BY pid", "--sql", "-o", "csv", env=env)
    assert r.stdout.splitlines() == ["pid,anon_rss_bytes", "101,536870912", "102,536870912"]  # raw in CSV


def test_bad_query_shows_a_caret_and_exits_1(stack: Stack, tmp_path: Path) -> None:
    r = pxo("query", "oom_events | last 1x", env=api_env(stack, tmp_path))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "pxo: expected a duration after 'last' (e.g. 30s, 15m, 1h, 7d, 2w), found '1x'",
        "  oom_events | last 1x",
        "                    ^",
    ]
    r = pxo("query", "oom_evnts | last 1h", env=api_env(stack, tmp_path))
    assert "hint: did you mean oom_events?" in r.stderr and "Traceback" not in r.stderr


def test_partial_answer_exits_3_and_names_the_node(stack: Stack, tmp_path: Path) -> None:
    stack.edge.stop()
    r = pxo("query", "oom_events | last 1h", env=api_env(stack, tmp_path))
    assert r.returncode == 3
    assert "partial answer: 1 of 1 nodes did not answer" in r.stderr
    assert "node-1: failed: edge unreachable" in r.stderr or "node-1: down" in r.stderr


def test_unreachable_exits_4_and_unconfigured_exits_1(tmp_path: Path) -> None:
    r = pxo("query", "oom_events | last 1h", env={"PXO_API_URL": "http://127.0.0.1:9", "PXO_API_KEY": "k"})
    assert r.returncode == 4 and "cannot reach the pxo cloud" in r.stderr
    r = pxo("query", "x", env={"XDG_CONFIG_HOME": str(tmp_path), "PXO_API_URL": "", "PXO_API_KEY": ""})
    assert r.returncode == 1 and "pxo deploy --local" in r.stderr
    assert pxo("bogus").returncode == 2


def test_config_file_is_private(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = Config(api_url="http://x", api_key="secret").save()
    assert path == tmp_path / "pxo" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("PXO_API_KEY", "from-env")
    assert Config.load().api_key == "from-env" and Config.load().api_url == "http://x"


def test_tables_fit_or_become_records() -> None:
    narrow = output.table(["pid", "comm"], [[1, "a"], [22, "bb"]], width=80)
    assert narrow.splitlines() == ["PID  COMM", "1    a", "22   bb"]
    wide = output.table(["a" * 30, "b" * 30, "c" * 30], [[1, 2, 3]], width=80)
    assert wide.splitlines()[0].startswith("-[ row 1 ]") and len(wide.splitlines()) == 4
    assert output.human_bytes(71958528) == "68.6 MiB" and output.cell("x", None) == "-"
    assert [output.human_duration(s) for s in (-1, 45, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600 + 59)] == \
        ["0s", "45s", "12m", "3h 5m", "2d 4h"]


def test_cells_show_sizes_and_large_numbers_plainly() -> None:
    assert output.cell("p99_anon_rss_bytes", 71958528.3) == "68.6 MiB"
    assert output.cell("p", 71883193.4) == "71883193"  # not 7.18832e+07
    assert output.cell("ratio", 0.123456789) == "0.123457"
    assert output.cell("x", None) == "-"


def test_help_imports_no_heavy_modules() -> None:
    code = ("import sys; from pxo.cli.main import main; main(['--help']); "
            "heavy = [m for m in ('grpc', 'duckdb', 'fastapi', 'pyarrow', 'pydantic', 'bcc') if m in sys.modules]; "
            "sys.stderr.write(repr(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stderr.strip() == "[]" and "pxo query" in r.stdout


def test_colour_is_added_to_cells_after_padding_and_only_to_states() -> None:
    import re

    from pxo.cli import output

    sources = output.Styled(("oom=", ""), *output.state("running").segments,
                            (", store=", ""), *output.state("degraded").segments, (" (the disk failed once)", ""))
    rows = [["node-1", output.state("live"), "a job that failed yesterday", sources],
            ["node-22", output.state("down"), "-", output.Styled(("oom=", ""), *output.state("failed").segments)]]
    cols = ["node", "state", "note", "sources"]
    plain = output.table(cols, rows, width=200)
    painted = output.table(cols, rows, width=200, colour=True)
    assert re.sub(r"\x1b\[[0-9;]*m", "", painted) == plain  # escape codes never move a column
    assert "\x1b[32mlive\x1b[0m" in painted and "\x1b[31mdown\x1b[0m" in painted
    assert "\x1b[33mdegraded\x1b[0m" in painted and "\x1b[31mfailed\x1b[0m" in painted  # a state...
    assert "a job that failed yesterday" in painted and "(the disk failed once)" in painted  # ...not a word
