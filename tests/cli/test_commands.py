"""`pxo auth|keys|users|clusters|tables|completion` as a user runs them: subprocesses
against a real cloud (the Stack fixture), checking output and exit codes."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from tests.helpers.cli import pxo
from tests.helpers.services import Stack


def env_for(stack: Stack, tmp: Path, key: str | None = None) -> dict[str, str]:
    return {"PXO_API_URL": stack.url, "PXO_API_KEY": stack.key if key is None else key,
            "XDG_CONFIG_HOME": str(tmp / "cfg"), "NO_COLOR": ""}


def test_login_whoami_logout(stack: Stack, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "PXO_API_URL": "", "PXO_API_KEY": ""}
    r = pxo("auth", "login", "--url", stack.url, "--key-stdin", env=env, stdin=stack.key + "\n")
    assert r.returncode == 0, r.stderr
    assert f"signed in to {stack.url} as admin (admin)" in r.stderr
    cfg = tmp_path / "cfg" / "pxo" / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600 and json.loads(cfg.read_text())["api_key"] == stack.key
    r = pxo("auth", "whoami", "-o", "json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == {"user": "admin", "role": "admin", "key": stack.key[:12]}
    r = pxo("auth", "whoami", env=env)
    assert r.stdout.split("\n")[0].split() == ["USER", "ROLE", "KEY"]
    assert pxo("auth", "logout", env=env).returncode == 0
    r = pxo("auth", "whoami", env=env)
    assert r.returncode == 1 and "no API key" in r.stderr
    r = pxo("auth", "login", "--url", stack.url, "--key-stdin", env=env, stdin="pxo_bad\n")
    assert r.returncode == 1 and "invalid or revoked API key" in r.stderr and "pxo auth login" in r.stderr


def test_keys_and_users_lifecycle_and_roles(stack: Stack, tmp_path: Path) -> None:
    admin = env_for(stack, tmp_path)
    r = pxo("users", "create", "vera", "--role", "viewer", env=admin)
    assert r.returncode == 0, r.stderr
    viewer_key = r.stdout.strip()
    assert viewer_key.startswith("pxo_") and "shown this once" in r.stderr
    viewer = env_for(stack, tmp_path, viewer_key)
    r = pxo("keys", "create", "--label", "mine", env=viewer)
    assert r.returncode == 1 and "admin role" in r.stderr  # 403 from the cloud: a user error
    assert pxo("query", "oom_events | last 1h", env=viewer).returncode == 0

    r = pxo("keys", "create", "--user", "vera", "--label", "ci", "-o", "json", env=admin)
    made = json.loads(r.stdout)
    assert made["user"] == "vera" and made["label"] == "ci" and made["key"].startswith(made["id"])
    r = pxo("keys", "list", env=admin)
    assert r.returncode == 0 and made["id"] in r.stdout and made["key"] not in r.stdout
    header = r.stdout.splitlines()[0].split()
    assert header == ["ID", "USER", "ROLE", "LABEL", "CREATED", "LAST_USED"]
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    r = pxo("keys", "list", "--user", "vera", "--all", "-o", "csv", env=admin)
    assert r.stdout.splitlines()[0] == "id,user,role,label,created,last_used,revoked"

    assert pxo("keys", "revoke", made["id"], env=admin).returncode == 0
    r = pxo("auth", "whoami", env=env_for(stack, tmp_path, made["key"]))
    assert r.returncode == 1 and "invalid or revoked" in r.stderr
    assert pxo("keys", "revoke", made["id"], env=admin).returncode == 1

    r = pxo("users", "list", "-o", "json", env=admin)
    assert {u["name"] for u in json.loads(r.stdout)} == {"admin", "vera"}
    assert pxo("users", "delete", "vera", env=admin).returncode == 0
    assert pxo("auth", "whoami", env=viewer).returncode == 1
    r = pxo("users", "delete", "admin", env=admin)
    assert r.returncode == 1 and "cannot remove yourself" in r.stderr


def test_tables_nodes_and_clusters(stack: Stack, tmp_path: Path) -> None:
    env = env_for(stack, tmp_path)
    r = pxo("tables", env=env)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ["TABLE", "COLUMNS", "DESCRIPTION"]
    assert any(line.startswith("oom_events ") for line in r.stdout.splitlines())
    r = pxo("tables", "oom_events", "-o", "json", env=env)
    cols = {c["name"]: c for c in json.loads(r.stdout)["columns"]}
    assert cols["time"]["type"] == "TIMESTAMP" and cols["time"]["description"]
    r = pxo("tables", "oom_evnts", env=env)
    assert r.returncode == 1 and "no table named 'oom_evnts'" in r.stderr
    r = pxo("nodes", "-o", "csv", env=env)
    assert r.stdout.splitlines()[1].startswith("node-1,live,")
    r = pxo("clusters", "list", env=env)
    assert r.stdout.splitlines()[1].split()[:3] == ["default", stack.collector_addr, "yes"]
    r = pxo("query", "oom_events | last 1h", "--cluster", "nope", env=env)
    assert r.returncode == 1 and "no cluster named 'nope'" in r.stderr
    r = pxo("clusters", "add", "dead", "127.0.0.1:9", "--token-stdin", env=env, stdin="t" * 20 + "\n")
    assert r.returncode == 0 and "cluster dead at 127.0.0.1:9" in r.stderr
    r = pxo("clusters", "list", "-o", "json", env=env)
    assert {c["name"]: c["authenticated"] for c in json.loads(r.stdout)} == {"default": False, "dead": True}
    r = pxo("nodes", "--cluster", "dead", env=env)
    assert r.returncode == 4 and "127.0.0.1:9" in r.stderr  # that collector is unreachable
    assert pxo("clusters", "remove", "dead", env=env).returncode == 0
    r = pxo("clusters", "remove", "default", env=env)
    assert r.returncode == 1 and "default cluster" in r.stderr


def test_usage_errors_exit_2_and_help_has_examples(tmp_path: Path) -> None:
    for args in (["keys"], ["keys", "bogus"], ["query"], ["-o", "json"], ["users", "create", "x", "--role", "god"]):
        assert pxo(*args).returncode == 2, args
    for args in (["query"], ["keys", "create"], ["auth", "login"], ["tables"], ["users"], ["completion"]):
        r = pxo(*args, "--help")
        assert r.returncode == 0 and "examples:" in r.stdout and "exit codes:" in r.stdout, args


def test_completion_and_subcommand_help_import_no_heavy_modules() -> None:
    import sys

    code = ("import sys; from pxo.cli.main import main; main(['completion', 'bash']); main(['keys']); "
            "heavy = [m for m in ('grpc', 'duckdb', 'fastapi', 'pyarrow', 'pydantic', 'bcc') if m in sys.modules]; "
            "sys.stderr.write(repr(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stderr.strip().splitlines()[-1].endswith("[]")


def test_completion_scripts(tmp_path: Path) -> None:
    r = pxo("completion", "bash")
    assert r.returncode == 0 and "complete -F _pxo pxo" in r.stdout
    probe = (r.stdout + '\nCOMP_WORDS=(pxo keys ""); COMP_CWORD=2; _pxo; echo "${COMPREPLY[@]}"'
             '\nCOMP_WORDS=(pxo query -o ""); COMP_CWORD=3; _pxo; echo "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=10).stdout.splitlines()
    assert set(out[0].split()) >= {"create", "list", "revoke"} and out[1].split() == ["table", "json", "csv"]
    assert pxo("completion", "zsh").stdout.startswith("#compdef pxo")


def test_csv_is_streamed_and_a_partial_answer_still_exits_3(stack: Stack, tmp_path: Path) -> None:
    env = env_for(stack, tmp_path)
    r = pxo("query", "SELECT pid FROM oom_events ORDER BY pid", "--sql", "-o", "csv", env=env)
    assert r.returncode == 0 and r.stdout.splitlines() == ["pid", "101", "102"]
    r = pxo("query", "oom_evnts | last 1h", "-o", "csv", env=env)
    assert r.returncode == 1 and "hint: did you mean oom_events?" in r.stderr and r.stdout == ""
    stack.edge.stop()
    r = pxo("query", "oom_events | last 1h", "-o", "csv", env=env)
    assert r.returncode == 3 and "partial answer: 1 of 1 nodes did not answer" in r.stderr
    assert r.stdout.startswith("node,time,pid")
