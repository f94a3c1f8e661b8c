"""pxo: see every OOM kill in your cluster, and ask about it in one line.

Only the standard library is imported at start; each command imports what it
needs, so `pxo --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pxo.cli.errors import EXIT_OK, EXIT_USAGE, CliError, PartialAnswer

EXAMPLES = """\
examples:
  pxo deploy --local                       start pxo on this machine (root)
  pxo query "oom_events | last 1h"         every OOM kill of the last hour
  pxo query "oom_events | last 7d | take 5" -o json
  pxo query --sql "SELECT comm, count(*) AS kills FROM oom_events GROUP BY comm"
  pxo nodes                                the edges and their probes
  pxo oom-drill                            cause one contained OOM kill to check pxo
  pxo delete --local                       stop the local deployment

exit codes: 0 ok, 1 error, 2 usage, 3 partial answer (some nodes missing),
            4 the pxo cloud is unreachable
environment: PXO_API_URL and PXO_API_KEY override the config file
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


def cmd_deploy(args: argparse.Namespace) -> int:
    if not args.local:
        raise CliError("only local deployments are available in this release: use 'pxo deploy --local'")
    import os

    from pxo.cli.local import LocalPorts

    if os.geteuid() != 0:
        raise CliError("the edge loads eBPF programs and needs root: run 'sudo pxo deploy --local'")
    cfg, local = _local(args)
    ports = LocalPorts(args.collector_port, args.edge_port, args.cloud_port)
    cfg = local.deploy(cfg, ports=ports, node=args.node, timeout=args.timeout)
    path = cfg.save()
    _say(f"pxo is running locally (data in {local.dir}); API {cfg.api_url}")
    _say(f"admin API key saved to {path}")
    _say('try: pxo query "oom_events | last 1h"    stop: pxo delete --local')
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    if not args.local:
        raise CliError("only local deployments are available in this release: use 'pxo delete --local'")
    _cfg, local = _local(args)
    stopped = local.delete()
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


def cmd_query(args: argparse.Namespace) -> int:
    from pxo.cli import output
    from pxo.cli.api import Api
    from pxo.cli.config import Config

    api = Api.from_config(Config.load())
    try:
        body = api.call("POST", "/api/v1/query", {"query": args.text, "sql": args.sql, "row_limit": args.limit})
    except CliError as exc:
        raise _render_query_error(args.text, exc) from None
    columns = [c["name"] for c in body["columns"]]
    if args.output == "json":
        print(output.as_json(body))
    elif args.output == "csv":
        print(output.as_csv(columns, body["rows"]))
    else:
        print(output.table(columns, body["rows"]) if body["rows"] else "(no rows)")
    if body.get("truncated"):
        _say(f"note: the answer was cut at {len(body['rows'])} rows")
    missing = [n for n in body["nodes"] if n["state"] not in ("ok", "skipped")]
    if missing:
        lines = "\n".join(f"  {n['node']}: {n['state']}: {n['detail']}" for n in missing)
        raise PartialAnswer(f"partial answer: {len(missing)} of {len(body['nodes'])} nodes did not answer",
                            detail=lines)
    if not body["nodes"]:
        _say("note: no edge is registered, so no node was asked")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    from pxo.cli import output
    from pxo.cli.api import Api
    from pxo.cli.config import Config

    body = Api.from_config(Config.load()).call("GET", "/api/v1/nodes")
    if args.output == "json":
        print(output.as_json(body))
        return EXIT_OK
    cols = ["node", "state", "address", "edge_version", "kernel_release", "sources"]
    rows = [[n["node"], n["state"], n["address"], n["edge_version"], n["kernel_release"],
             ", ".join(f"{s['name']}={s['state']}" + (f" ({s['detail']})" if s["detail"] else "")
                       for s in n["sources"])] for n in body["nodes"]]
    print(output.as_csv(cols, rows) if args.output == "csv" else
          (output.table(cols, rows) if rows else "(no nodes)"))
    return EXIT_OK


def cmd_oom_drill(args: argparse.Namespace) -> int:
    import os

    if os.geteuid() != 0:
        raise CliError("creating a memory-limited cgroup needs root")
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Any, help: str, example: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    add("version", cmd_version, "print pxo's version", "pxo version")

    d = add("deploy", cmd_deploy, "deploy pxo (locally: collector, edge and cloud on loopback)",
            "sudo pxo deploy --local")
    d.add_argument("--local", action="store_true", help="run the components as processes on this machine")
    d.add_argument("--data-dir", help="where the local deployment keeps its data (default: ~/.local/share/pxo/local)")
    d.add_argument("--node", default="", help="this node's name (default: the hostname)")
    d.add_argument("--collector-port", type=int, default=50700, help="0 picks a free port")
    d.add_argument("--edge-port", type=int, default=50701, help="0 picks a free port")
    d.add_argument("--cloud-port", type=int, default=8700, help="0 picks a free port")
    d.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each step")

    x = add("delete", cmd_delete, "stop a deployment (its data is kept)", "pxo delete --local")
    x.add_argument("--local", action="store_true", help="stop the local deployment")
    x.add_argument("--data-dir", help="the local deployment's data directory")

    q = add("query", cmd_query, "ask every node a question", 'pxo query "oom_events | last 1h"')
    q.add_argument("text", help="the query, e.g. 'oom_events | last 1h'")
    q.add_argument("--sql", action="store_true", help="the query is a read-only SQL SELECT")
    q.add_argument("-o", "--output", choices=("table", "json", "csv"), default="table")
    q.add_argument("--limit", type=int, default=0, help="most rows to return (default: the collector's cap)")

    n = add("nodes", cmd_nodes, "list the edges and the state of their probes", "pxo nodes")
    n.add_argument("-o", "--output", choices=("table", "json", "csv"), default="table")

    o = add("oom-drill", cmd_oom_drill,
            "cause one real, contained OOM kill in a throw-away cgroup (to check pxo end to end)",
            "sudo pxo oom-drill && pxo query 'oom_events | last 5m'")
    o.add_argument("--limit-mib", type=int, default=64, help="the cgroup's memory limit (MiB)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
