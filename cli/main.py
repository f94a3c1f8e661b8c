"""pxo: see every OOM kill in your cluster, and ask about it in one line.

Only the standard library is imported at start; each command imports what it
needs, so `pxo --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pxo.cli.errors import EXIT_OK, EXIT_USAGE, CliError, PartialAnswer, Unreachable

EXIT_CODES = """\
exit codes: 0 ok, 1 error (bad query, refused, not signed in...), 2 usage,
            3 partial answer (some nodes missing), 4 the pxo cloud is unreachable"""

EXAMPLES = f"""\
examples:
  pxo deploy --local                       start pxo on this machine (root)
  pxo deploy --kubernetes --image IMG      deploy to the kubeconfig's cluster
  pxo query "oom_events | last 1h"         every OOM kill of the last hour
  pxo query "oom_events | last 7d | take 5" -o json
  pxo query --sql "SELECT comm, count(*) AS kills FROM oom_events GROUP BY comm"
  pxo explain                              why the last kill happened, and what led to it
  pxo tables                               what can be asked, column by column
  pxo nodes                                the edges and their probes
  pxo auth login --url http://pxo:8700     sign in with an API key
  pxo keys create --user alice             a new API key (admins)
  pxo oom-drill                            cause one contained OOM kill to check pxo
  pxo delete --local                       stop the local deployment
  pxo deploy --containers                  the image, as the cluster runs it, with podman (root)
  source <(pxo completion bash)            tab completion

{EXIT_CODES}
environment: PXO_API_URL and PXO_API_KEY override the config file
             ($XDG_CONFIG_HOME/pxo/config.json); NO_COLOR turns colour off
"""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- commands ------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    from pxo.common.version import pxo_version

    print(f"pxo {pxo_version()}")
    return EXIT_OK


def _local(args: argparse.Namespace) -> Any:
    from pxo.cli.config import Config, data_home
    from pxo.cli.local import LocalDeployment

    cfg = Config.load()
    data_dir = Path(args.data_dir) if args.data_dir else (
        Path(cfg.local_data_dir) if cfg.local_data_dir else data_home() / "local")
    return cfg, LocalDeployment(data_dir)


def _kubeconfig_present() -> bool:
    from pxo.common.kubeconfig import kubeconfig_files

    return bool(kubeconfig_files())


def _containers(args: argparse.Namespace) -> tuple[Any, Any]:
    from pxo.cli.config import Config, data_home
    from pxo.cli.containers import ContainerDeployment

    cfg = Config.load()
    data_dir = Path(args.data_dir) if args.data_dir else (
        Path(cfg.containers_data_dir) if cfg.containers_data_dir else data_home() / "containers")
    return cfg, ContainerDeployment(data_dir)


def cmd_deploy(args: argparse.Namespace) -> int:
    if sum((args.local, args.kubernetes, args.containers)) > 1:
        raise CliError("--local, --containers or --kubernetes: one deployment at a time")
    if args.containers:
        from pxo.common.version import pxo_version

        cfg, deployment = _containers(args)
        cfg = deployment.deploy(cfg, image=args.image or f"localhost/pxo:{pxo_version()}", node=args.node,
                                cloud_port=args.cloud_port, timeout=args.timeout or 180.0)
        path = cfg.save()
        _say(f"pxo is running in containers (podman; data in {deployment.dir}); API {cfg.api_url}")
        _say(f"admin API key saved to {path}")
        _say('try: pxo oom-drill --container && pxo query "oom_events | last 1h"    stop: pxo delete --containers')
        return EXIT_OK
    if args.kubernetes or (not args.local and (args.dry_run or _kubeconfig_present())):
        from pxo.cli import kube
        from pxo.common.version import pxo_version

        return kube.deploy(image=args.image or f"pxo:{pxo_version()}", timeout=args.timeout or 300.0,
                           context=args.context, dry_run=args.dry_run,
                           manifests=Path(args.manifests) if args.manifests else kube.MANIFESTS)
    if not args.local:
        raise CliError("where to? 'pxo deploy --local' (this machine) or 'pxo deploy --kubernetes' "
                       "(no kubeconfig was found: set KUBECONFIG or ~/.kube/config)")
    import os

    from pxo.cli.local import LocalPorts

    if os.geteuid() != 0:
        raise CliError("the edge loads eBPF programs and needs root: run 'sudo pxo deploy --local'")
    cfg, local = _local(args)
    ports = LocalPorts(args.collector_port, args.edge_port, args.cloud_port)
    cfg = local.deploy(cfg, ports=ports, node=args.node, timeout=args.timeout or 90.0)
    path = cfg.save()
    _say(f"pxo is running locally (data in {local.dir}); API {cfg.api_url}")
    _say(f"admin API key saved to {path}")
    _say('try: pxo query "oom_events | last 1h"    stop: pxo delete --local')
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    if args.containers:
        _cfg, deployment = _containers(args)
        gone = deployment.delete(unpin=not args.keep_pins)
        _say(f"removed {', '.join(gone)} (data kept in {deployment.dir})" if gone
             else "no pxo containers were running")
        return EXIT_OK
    if args.kubernetes:
        from pxo.cli import kube

        gone = kube.delete(timeout=args.timeout, context=args.context, keep_pins=args.keep_pins,
                           manifests=Path(args.manifests) if args.manifests else kube.MANIFESTS)
        _say(f"deleted {', '.join(gone)}" if gone else "pxo was not deployed in this cluster")
        return EXIT_OK
    if not args.local:
        raise CliError("which deployment? 'pxo delete --local', 'pxo delete --containers' or "
                       "'pxo delete --kubernetes'")
    _cfg, local = _local(args)
    stopped = local.delete(unpin=not args.keep_pins)
    _say(f"stopped {', '.join(stopped)}" if stopped else f"nothing was running from {local.dir}")
    return EXIT_OK


def _render_query_error(text: str, exc: CliError) -> CliError:
    if exc.line and exc.column:
        line = text.splitlines()[exc.line - 1] if text.splitlines() else text
        exc.detail = f"  {line}\n  {' ' * (exc.column - 1)}^"
        if exc.line > 1:
            exc.detail = f"  line {exc.line}:\n" + exc.detail
    if exc.hint:
        exc.detail = (exc.detail + "\n" if exc.detail else "") + f"  hint: {exc.hint}"
    return exc


def _api() -> Any:
    from pxo.cli.api import Api
    from pxo.cli.config import Config

    return Api.from_config(Config.load())


def _print_table(args: argparse.Namespace, columns: list[str], rows: list[list[Any]], empty: str, *,
                 shorten_last: bool = False) -> None:
    from pxo.cli import output

    if args.output == "json":
        print(output.as_json([dict(zip(columns, r, strict=True)) for r in rows]))
    elif args.output == "csv":
        print(output.as_csv(columns, rows))
    elif not rows:
        print(empty)
    else:
        colour = output.use_colour(sys.stdout, disabled=args.no_color)
        print(output.table(columns, rows, shorten_last=shorten_last, colour=colour))


NDJSON = "application/x-ndjson"


def _query_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"query": args.text, "sql": args.sql, "row_limit": args.limit, "cluster": args.cluster}


def _answer_notes(summary: dict[str, Any], rows: int) -> None:
    """What the answer's summary says beside the rows: cut, approximate, partial (exit 3)."""
    if summary.get("truncated"):
        _say(f"note: the answer was cut at {rows} rows")
    if summary.get("approximate_columns"):
        _say(f"note: {', '.join(summary['approximate_columns'])} approximate, within "
             f"{summary.get('relative_error', 0):.2%} (docs/query-language.md)")
    nodes = summary.get("nodes", [])
    missing = [n for n in nodes if n["state"] not in ("ok", "skipped")]
    if missing:
        lines = "\n".join(f"  {n['node']}: {n['state']}: {n['detail']}" for n in missing)
        raise PartialAnswer(f"partial answer: {len(missing)} of {len(nodes)} nodes did not answer", detail=lines)
    if not nodes:
        _say("note: no edge is registered, so no node was asked")


def cmd_query(args: argparse.Namespace) -> int:
    from pxo.cli import output

    if args.follow and args.sql:
        raise CliError("--follow takes a pipe query (table | where ...), not --sql")
    api = _api()
    if args.follow:
        return _query_follow(api, args)
    if args.output == "csv":
        return _query_csv(api, args)
    try:
        with output.Progress("querying every node ..."):
            body = api.call("POST", "/api/v1/query", _query_body(args))
    except CliError as exc:
        raise _render_query_error(args.text, exc) from None
    if "error" in body:  # the collector's stream broke after the answer had started
        raise api.error(502, body["error"])
    columns = [c["name"] for c in body["columns"]]
    if args.output == "json":
        print(output.as_json(body))
    else:
        colour = output.use_colour(sys.stdout, disabled=args.no_color)
        print(output.table(columns, body["rows"], colour=colour) if body["rows"] else "(no rows)")
    _answer_notes(body, len(body["rows"]))
    return EXIT_OK


def _ndjson(resp: Any) -> Any:
    """The objects of an NDJSON answer, one a line, as they arrive."""
    import json

    for line in resp:
        if line.strip():
            yield json.loads(line)


def _query_csv(api: Any, args: argparse.Namespace) -> int:
    """CSV written row by row as the cloud streams the answer (NDJSON): a big answer is
    never held whole, and the summary (last line) still decides the exit code."""
    from pxo.cli import output

    try:
        with output.Progress("querying every node ..."):
            resp = api.open("POST", "/api/v1/query", _query_body(args), accept=NDJSON)
    except CliError as exc:
        raise _render_query_error(args.text, exc) from None
    summary: dict[str, Any] | None = None
    rows = 0
    out = sys.stdout
    with resp:
        for obj in _ndjson(resp):
            if "row" in obj:
                out.write(output.csv_line(obj["row"]))
                rows += 1
            elif "columns" in obj:
                out.write(output.csv_line([c["name"] for c in obj["columns"]]))
            elif "summary" in obj:
                summary = obj["summary"]
            elif "error" in obj:
                out.flush()
                raise api.error(502, obj["error"])
    out.flush()
    if summary is None:
        raise CliError("the answer ended before its summary: it may be incomplete")
    _answer_notes(summary, rows)
    return EXIT_OK


def _query_follow(api: Any, args: argparse.Namespace) -> int:
    """Rows as the nodes commit them, until Ctrl-C (exit 0); node changes on stderr."""
    from pxo.cli import output

    try:
        resp = api.open("POST", "/api/v1/query/follow", {"query": args.text, "row_limit": args.limit,
                                                          "cluster": args.cluster}, accept=NDJSON, timeout=None)
    except CliError as exc:
        raise _render_query_error(args.text, exc) from None
    except KeyboardInterrupt:
        return EXIT_OK
    colour = output.use_colour(sys.stdout, disabled=args.no_color)
    err_colour = output.use_colour(sys.stderr, disabled=args.no_color)
    columns: list[str] = []
    shown: Any = None
    out = sys.stdout
    try:
        with resp:
            for obj in _ndjson(resp):
                if "row" in obj:
                    row = obj["row"]
                    if args.output == "json":
                        import json

                        out.write(json.dumps(dict(zip(columns, row, strict=True))) + "\n")
                    elif args.output == "csv":
                        out.write(output.csv_line(row))
                    else:
                        shown = shown or output.FollowTable(columns)
                        header = not shown.header_done
                        for i, line in enumerate(shown.lines([row])):
                            out.write((output.paint(line, "bold", colour) if header and i == 0 else line) + "\n")
                    out.flush()
                elif "columns" in obj:
                    columns = [c["name"] for c in obj["columns"]]
                    if args.output == "csv":
                        out.write(output.csv_line(columns))
                        out.flush()
                elif "nodes" in obj:
                    for n in obj["nodes"]:
                        state = output.paint(n["state"], output.STATE_COLOURS.get(n["state"], ""), err_colour)
                        _say(f"{n['node']}: {state}" + (f": {n['detail']}" if n["detail"] else ""))
                elif "error" in obj:
                    raise api.error(502, obj["error"])
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how a follow ends
    raise Unreachable("the pxo cloud ended the follow stream")


def cmd_nodes(args: argparse.Namespace) -> int:
    import datetime as dt

    from pxo.cli import output

    body = _api().call("GET", "/api/v1/nodes", query={"cluster": args.cluster})
    if args.output == "json":
        print(output.as_json(body))
        return EXIT_OK
    cols = ["node", "state", "up", "address", "edge_version", "kernel_release", "sources"]
    now = dt.datetime.now(dt.UTC)

    def up(n: dict[str, Any]) -> str:  # the edge process's uptime: a short one on an old node is a restart
        started = n.get("started")
        if not started:
            return "-"
        return output.human_duration((now - dt.datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds())

    def sources(n: dict[str, Any]) -> output.Styled:
        parts: list[tuple[str, str]] = []
        for i, s in enumerate(n["sources"]):
            parts.append(((", " if i else "") + f"{s['name']}=", ""))
            parts += output.state(s["state"]).segments
            if s["detail"]:
                parts.append((f" ({s['detail']})", ""))
        return output.Styled(*parts)

    rows = [[n["node"], output.state(n["state"]), up(n), n["address"], n["edge_version"], n["kernel_release"],
             sources(n)]
            for n in body["nodes"]]
    _print_table(args, cols, rows, "(no nodes)")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from pxo.cli import explain, output

    window = explain.parse_window(args.window)
    with output.Progress("finding the kill ..."):
        body = _api().call("GET", "/api/v1/explain",
                           query={"target": args.target, "window": str(window), "cluster": args.cluster})
    if args.output == "json":
        print(output.as_json(body))
    else:
        print(explain.render(body, colour=output.use_colour(sys.stdout, disabled=args.no_color)))
    return EXIT_OK


def cmd_tables(args: argparse.Namespace) -> int:
    from pxo.cli import output

    tables = _api().call("GET", "/api/v1/tables", query={"cluster": args.cluster})
    if args.table:
        found = [t for t in tables if t["name"] == args.table]
        if not found:
            names = ", ".join(t["name"] for t in tables) or "none"
            raise CliError(f"no table named {args.table!r}", detail=f"  tables: {names}")
        if args.output == "json":
            print(output.as_json(found[0]))
            return EXIT_OK
        _print_table(args, ["column", "type", "description"],
                     [[c["name"], c["type"], c["description"]] for c in found[0]["columns"]], "(no columns)",
                     shorten_last=True)
        return EXIT_OK
    if args.output == "json":
        print(output.as_json(tables))
        return EXIT_OK
    _print_table(args, ["table", "columns", "description"],
                 [[t["name"], len(t["columns"]), t["description"]] for t in tables],
                 "(no tables: no edge has registered yet)", shorten_last=True)
    return EXIT_OK


def _when(ts: float | None) -> str:
    import datetime as dt

    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_auth_login(args: argparse.Namespace) -> int:
    import os

    from pxo.cli.api import Api
    from pxo.cli.config import Config

    cfg = Config.load()
    url = args.url or cfg.api_url
    if not url:
        raise CliError("which pxo cloud? give --url http://HOST:8700 (or set PXO_API_URL)")
    if args.key_stdin:
        key = sys.stdin.readline().strip()
    elif os.environ.get("PXO_API_KEY"):
        key = os.environ["PXO_API_KEY"]
    elif sys.stdin.isatty():
        import getpass

        key = getpass.getpass("API key: ").strip()
    else:
        raise CliError("no API key: pipe it with --key-stdin, or set PXO_API_KEY")
    if not key:
        raise CliError("an empty API key")
    who = Api(url, key).call("GET", "/api/v1/whoami")
    saved = Config(api_url=url, api_key=key, local_data_dir=cfg.local_data_dir if url == cfg.api_url else "")
    path = saved.save()
    _say(f"signed in to {url} as {who['user']} ({who['role']}); key {who['key']} saved to {path}")
    return EXIT_OK


def cmd_auth_logout(args: argparse.Namespace) -> int:
    from pxo.cli.config import Config, config_path

    path = config_path()
    cfg = Config.load(path)
    if not path.exists():
        _say("not signed in")
        return EXIT_OK
    import json

    raw = json.loads(path.read_text() or "{}")
    raw["api_key"] = ""
    Config(**{k: str(v) for k, v in raw.items() if k in Config.__dataclass_fields__}).save(path)
    _say(f"signed out of {cfg.api_url or 'pxo'}: the key was removed from {path} (it still works until "
         "an admin revokes it: pxo keys revoke ID)")
    return EXIT_OK


def cmd_auth_whoami(args: argparse.Namespace) -> int:
    from pxo.cli import output

    who = _api().call("GET", "/api/v1/whoami")
    if args.output == "json":
        print(output.as_json(who))
    else:
        _print_table(args, ["user", "role", "key"], [[who["user"], who["role"], who["key"]]], "")
    return EXIT_OK


KEY_COLUMNS = ["id", "user", "role", "label", "created", "last_used"]


def _key_row(k: dict[str, Any], revoked: bool = False) -> list[Any]:
    row = [k["id"], k["user"], k["role"], k["label"], _when(k["created_at"]), _when(k["last_used_at"])]
    return [*row, _when(k["revoked_at"])] if revoked else row


def _show_new_key(args: argparse.Namespace, made: dict[str, Any]) -> None:
    from pxo.cli import output

    if args.output == "json":
        print(output.as_json(made))
    else:
        print(made["key"])
    _say(f"key {made['id']} for {made['user']} ({made['role']}): shown this once, store it now")


def cmd_keys_create(args: argparse.Namespace) -> int:
    _show_new_key(args, _api().call("POST", "/api/v1/keys", {"user": args.user, "label": args.label}))
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _api().call("GET", "/api/v1/keys", query={"user": args.user})
    if not args.all:
        keys = [k for k in keys if k["revoked_at"] is None]
    if args.output == "json":
        from pxo.cli import output

        print(output.as_json(keys))
        return EXIT_OK
    _print_table(args, [*KEY_COLUMNS, "revoked"] if args.all else KEY_COLUMNS,
                 [_key_row(k, args.all) for k in keys], "(no keys)")
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    api = _api()
    for key_id in args.ids:
        api.call("DELETE", f"/api/v1/keys/{key_id[:12]}")
        _say(f"revoked {key_id[:12]}")
    return EXIT_OK


def cmd_users_create(args: argparse.Namespace) -> int:
    made = _api().call("POST", "/api/v1/users", {"name": args.name, "role": args.role})
    _say(f"created user {args.name} ({args.role})")
    _show_new_key(args, made["key"])
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    users = _api().call("GET", "/api/v1/users")
    if args.output == "json":
        from pxo.cli import output

        print(output.as_json(users))
        return EXIT_OK
    _print_table(args, ["user", "role", "keys", "created", "disabled"],
                 [[u["name"], u["role"], u["active_keys"], _when(u["created_at"]), _when(u["disabled_at"])]
                  for u in users], "(no users)")
    return EXIT_OK


def cmd_users_delete(args: argparse.Namespace) -> int:
    _api().call("DELETE", f"/api/v1/users/{args.name}")
    _say(f"disabled user {args.name}; its keys are revoked")
    return EXIT_OK


def cmd_clusters_list(args: argparse.Namespace) -> int:
    clusters = _api().call("GET", "/api/v1/clusters")
    if args.output == "json":
        from pxo.cli import output

        print(output.as_json(clusters))
        return EXIT_OK
    _print_table(args, ["cluster", "address", "default", "token", "tls"],
                 [[c["name"], c["address"], "yes" if c["default"] else "", "yes" if c["authenticated"] else "no",
                   "yes" if c.get("tls") else "no"] for c in clusters], "(no clusters)")
    return EXIT_OK


def _pem_file(flag: str, path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{flag} {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None


def cmd_clusters_add(args: argparse.Namespace) -> int:
    tls = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    if any(tls.values()) and not all(tls.values()):
        raise CliError("TLS needs --tls-ca, --tls-cert and --tls-key together; missing "
                       + ", ".join(k for k, v in tls.items() if not v))
    pem = {k: _pem_file(k, v) for k, v in tls.items()}  # read before the token: a typo fails first
    token = sys.stdin.readline().strip() if args.token_stdin else ""
    c = _api().call("POST", "/api/v1/clusters", {"name": args.name, "address": args.address, "token": token,
                                                 "default": args.default, "tls_ca": pem["--tls-ca"],
                                                 "tls_cert": pem["--tls-cert"], "tls_key": pem["--tls-key"]})
    _say(f"cluster {c['name']} at {c['address']}" + (" (the default)" if c["default"] else "")
         + (", mutual TLS" if pem["--tls-ca"] else ""))
    return EXIT_OK


def cmd_clusters_remove(args: argparse.Namespace) -> int:
    _api().call("DELETE", f"/api/v1/clusters/{args.name}")
    _say(f"removed cluster {args.name}")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from pxo.cli.completion import script

    print(script(build_parser(), args.shell))
    return EXIT_OK


def cmd_oom_drill(args: argparse.Namespace) -> int:
    import os

    if os.geteuid() != 0:
        raise CliError("creating a memory-limited cgroup needs root")
    if args.container:
        from pxo.cli.containers import container_drill
        from pxo.common.version import pxo_version

        d = container_drill(args.image or f"localhost/pxo:{pxo_version()}", limit_mib=args.limit_mib)
        print(f"OOM-killed container {d.name} ({d.container_id[:12]}, podman --memory {args.limit_mib}m): "
              f"exit {d.exit_code}; podman says OOMKilled={d.podman_oom_killed}; the container was removed")
        return EXIT_OK
    from pxo.edge.errors import EdgeError
    from pxo.edge.oomdrill import run_drill

    try:
        r = run_drill(limit_mib=args.limit_mib, allocate_mib=args.limit_mib * 4)
    except EdgeError as exc:
        raise CliError(str(exc)) from exc
    if not r.killed:
        raise CliError(f"the drill process {r.pid} was not OOM-killed (cgroup {r.cgroup_path})")
    print(f"OOM-killed pid {r.pid} ({r.comm}) in cgroup {r.cgroup_path}; "
          f"the kernel counted {r.oom_kills} kill(s); the cgroup was removed")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pxo", description="Every OOM kill in your cluster, attributed and queryable.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-color", action="store_true", help="no colour, even on a terminal (also: NO_COLOR=1)")
    # every subcommand also takes --no-color, after its own name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS, help="no colour")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(where: Any, name: str, func: Any, help: str, *examples: str,
            output: bool = False, cluster: bool = False) -> argparse.ArgumentParser:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES
        sp: argparse.ArgumentParser = where.add_parser(
            name, help=help, description=help, epilog=epilog, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        if output:
            sp.add_argument("-o", "--output", choices=("table", "json", "csv"), default="table",
                            help="table (default; bytes human-readable), or json / csv with raw values")
        if cluster:
            sp.add_argument("--cluster", default="", help="the cluster to ask (default: the default cluster)")
        return sp

    def group(name: str, help: str, *examples: str) -> Any:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES
        gp = sub.add_parser(name, help=help, description=help, epilog=epilog, parents=[common],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        gp.set_defaults(func=None, group=gp)
        return gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    add(sub, "version", cmd_version, "print pxo's version", "pxo version")

    d = add(sub, "deploy", cmd_deploy, "deploy pxo: to a Kubernetes cluster, or locally (collector, edge and cloud "
            "on loopback)", "pxo deploy --kubernetes --image registry.example/pxo:0.1.0",
            "pxo deploy --kubernetes --dry-run > pxo.yaml   (print the manifests, apply nothing)",
            "sudo pxo deploy --local", "sudo pxo deploy --local --cloud-port 0 --data-dir /tmp/pxo",
            "sudo pxo deploy --containers   (the image, run as the cluster runs it, with podman)")
    d.add_argument("--local", action="store_true", help="run the components as processes on this machine")
    d.add_argument("--containers", action="store_true",
                   help="run each component as a podman container of the image, with the Kubernetes pod specs")
    d.add_argument("--kubernetes", action="store_true",
                   help="deploy to the kubeconfig's cluster (the default when a kubeconfig exists, without --local)")
    d.add_argument("--image", default="", help="the pxo image (default: pxo:<version>; --containers: "
                   "localhost/pxo:<version>, built by scripts/image.sh when missing)")
    d.add_argument("--context", default=None, help="the kubeconfig context (default: the current one)")
    d.add_argument("--manifests", default="", help="the manifests' folder (default: deploy/kubernetes)")
    d.add_argument("--dry-run", action="store_true", help="print the manifests that would be applied, apply nothing")
    d.add_argument("--data-dir", help="where the local deployment keeps its data (default: ~/.local/share/pxo/local)")
    d.add_argument("--node", default="", help="this node's name (default: the hostname)")
    d.add_argument("--collector-port", type=int, default=50700, help="0 picks a free port")
    d.add_argument("--edge-port", type=int, default=50701, help="0 picks a free port")
    d.add_argument("--cloud-port", type=int, default=8700, help="0 picks a free port")
    d.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait: for each local step (90), for the cluster to be ready (300)")

    x = add(sub, "delete", cmd_delete, "stop a deployment (locally its data is kept; in a cluster everything goes)",
            "pxo delete --local", "pxo delete --containers", "pxo delete --kubernetes")
    x.add_argument("--local", action="store_true", help="stop the local deployment")
    x.add_argument("--containers", action="store_true", help="remove the containers (their data is kept)")
    x.add_argument("--kubernetes", action="store_true",
                   help="remove the edges' eBPF programs from the nodes, then delete namespace pxo and pxo's "
                        "cluster roles from the kubeconfig's cluster")
    x.add_argument("--context", default=None, help="the kubeconfig context (default: the current one)")
    x.add_argument("--manifests", default="", help="the manifests' folder (default: deploy/kubernetes)")
    x.add_argument("--keep-pins", action="store_true",
                   help="leave the edge's eBPF programs pinned (they keep running until the node reboots or the "
                        "next edge adopts them); by default they are removed (in a cluster by a short-lived "
                        "DaemonSet, before anything else)")
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until everything is gone")
    x.add_argument("--data-dir", help="the local deployment's data directory")

    q = add(sub, "query", cmd_query, "ask every node of a cluster a question",
            'pxo query "oom_events | last 1h"', 'pxo query "oom_events | last 7d | take 5" -o json',
            'pxo query --sql "SELECT pod, count(*) AS kills FROM oom_events GROUP BY pod" -o csv',
            'pxo query --follow \'oom_events | where namespace == "prod"\'',
            output=True, cluster=True)
    q.add_argument("text", help="the query, e.g. 'oom_events | last 1h'")
    q.add_argument("--sql", action="store_true", help="the query is a read-only SQL SELECT")
    q.add_argument("--limit", type=int, default=0, help="most rows to return (default: the collector's cap)")
    q.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new rows as the nodes commit them, like tail -f (Ctrl-C ends); a pipe "
                        "query of range, where, project and extend only")

    e = add(sub, "explain", cmd_explain, "why a process was killed: the kill, the minutes before, who held the "
            "memory, and a verdict (docs/explain.md)",
            "pxo explain                         (the most recent kill)", "pxo explain prod/api-7f9c/server",
            "pxo explain 48213 --window 30m", "pxo explain /kubepods/burstable/pod1234 -o json", cluster=True)
    e.add_argument("target", nargs="?", default="",
                   help="an oom_id, a pid, a cgroup path, a container id or namespace/pod[/container] "
                        "(default: the most recent kill)")
    e.add_argument("--window", default="10m", help="how long before the kill to show (default 10m; e.g. 90s, 1h)")
    e.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="table (default: text with sparklines) or json")

    t = add(sub, "tables", cmd_tables, "list the tables, or one table's columns with their descriptions",
            "pxo tables", "pxo tables oom_events", "pxo tables -o json", output=True, cluster=True)
    t.add_argument("table", nargs="?", default="", help="a table to describe column by column")

    add(sub, "nodes", cmd_nodes, "list the edges and the state of their probes", "pxo nodes", "pxo nodes -o json",
        output=True, cluster=True)

    au = group("auth", "sign in to a pxo cloud with an API key, and out again",
               "pxo auth login --url http://pxo.example:8700", "pxo auth whoami", "pxo auth logout")
    li = add(au, "login", cmd_auth_login, "check an API key and save it (config file, mode 0600)",
             "pxo auth login --url http://pxo.example:8700            (asks for the key)",
             "echo \"$KEY\" | pxo auth login --url http://pxo.example:8700 --key-stdin")
    li.add_argument("--url", default="", help="the pxo cloud's URL (default: the configured one)")
    li.add_argument("--key-stdin", action="store_true", help="read the key from standard input")
    add(au, "logout", cmd_auth_logout, "forget the saved API key", "pxo auth logout")
    add(au, "whoami", cmd_auth_whoami, "the user and role behind the key in use", "pxo auth whoami", output=True)

    ks = group("keys", "API keys: create (shown once), list, revoke (admins)",
               "pxo keys create --label ci", "pxo keys list", "pxo keys revoke pxo_3fa9c2d1")
    kc = add(ks, "create", cmd_keys_create, "create an API key; it is printed once, on stdout",
             "pxo keys create --label ci", "pxo keys create --user alice --label laptop", output=True)
    kc.add_argument("--user", default="", help="whose key (default: yours)")
    kc.add_argument("--label", default="", help="what the key is for")
    kl = add(ks, "list", cmd_keys_list, "list keys by their visible prefix (never the keys themselves)",
             "pxo keys list", "pxo keys list --user alice --all", output=True)
    kl.add_argument("--user", default="", help="only this user's keys")
    kl.add_argument("--all", action="store_true", help="revoked keys too")
    kr = add(ks, "revoke", cmd_keys_revoke, "revoke keys: they are refused from the next request on",
             "pxo keys revoke pxo_3fa9c2d1")
    kr.add_argument("ids", nargs="+", metavar="ID", help="a key's prefix (pxo_xxxxxxxx) or the whole key")

    us = group("users", "users and their roles: admin (manage) or viewer (query)",
               "pxo users create alice --role viewer", "pxo users list", "pxo users delete alice")
    uc = add(us, "create", cmd_users_create, "create a user; its first API key is printed once",
             "pxo users create alice", "pxo users create bob --role admin", output=True)
    uc.add_argument("name", help="lower case letters, digits, '.', '_' or '-'")
    uc.add_argument("--role", choices=("viewer", "admin"), default="viewer")
    add(us, "list", cmd_users_list, "list the users", "pxo users list", output=True)
    ud = add(us, "delete", cmd_users_delete, "disable a user and revoke all its keys", "pxo users delete alice")
    ud.add_argument("name")

    cl = group("clusters", "the collectors this pxo cloud fronts",
               "pxo clusters list", "pxo clusters add prod 10.0.0.5:50700 --token-stdin < token")
    add(cl, "list", cmd_clusters_list, "list the clusters", "pxo clusters list", output=True)
    ca = add(cl, "add", cmd_clusters_add, "add a cluster, or change one (admins)",
             "pxo clusters add prod 10.0.0.5:50700 --token-stdin --default < token",
             "pxo clusters add prod 10.0.0.5:50700 --tls-ca ca.crt --tls-cert cloud.crt --tls-key cloud.key "
             "--token-stdin < token")
    ca.add_argument("name")
    ca.add_argument("address", help="the collector's host:port")
    ca.add_argument("--token-stdin", action="store_true", help="read the collector's cluster token from stdin")
    ca.add_argument("--default", action="store_true", help="make it the default cluster")
    ca.add_argument("--tls-ca", metavar="FILE", help="the cluster CA (PEM): with --tls-cert and --tls-key, the "
                    "cloud dials this collector with mutual TLS (from `pxo deploy --kubernetes`: the Secret "
                    "pxo-tls-cloud, see deploy/README.md)")
    ca.add_argument("--tls-cert", metavar="FILE", help="the client certificate the cloud presents (PEM, role "
                    "pxo-cloud)")
    ca.add_argument("--tls-key", metavar="FILE", help="its private key (PEM; sent to the cloud once, which keeps "
                    "it in its 0600 store and never shows it)")
    cr = add(cl, "remove", cmd_clusters_remove, "forget a cluster (not the default one)", "pxo clusters remove prod")
    cr.add_argument("name")

    o = add(sub, "oom-drill", cmd_oom_drill,
            "cause one real, contained OOM kill in a throw-away cgroup (to check pxo end to end)",
            "sudo pxo oom-drill && pxo query 'oom_events | last 5m'",
            "sudo pxo oom-drill --container && pxo query 'oom_events | last 5m | project time, container, comm'")
    o.add_argument("--limit-mib", type=int, default=64, help="the cgroup's memory limit (MiB)")
    o.add_argument("--container", action="store_true",
                   help="kill a podman container instead: `podman run --memory` with an allocator in it")
    o.add_argument("--image", default="", help="with --container: the image to run (default: localhost/pxo:<version>)")

    c = add(sub, "completion", cmd_completion, "print a shell completion script",
            "source <(pxo completion bash)          # in ~/.bashrc",
            "source <(pxo completion zsh)           # in ~/.zshrc, after compinit")
    c.add_argument("shell", choices=("bash", "zsh"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        (getattr(args, "group", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"pxo: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pxo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pxo query ... | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
