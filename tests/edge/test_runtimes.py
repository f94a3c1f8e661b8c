"""Container names from a real runtime's API: podman's Docker-compatible service on a
socket of the test's own, real containers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.edge.attribution import Attributor
from pxo.edge.runtimes import DockerApiNames, runtime_indexes

pytestmark = pytest.mark.requires_bpf  # root: rootful podman

RUN = ["podman", "run", "-d", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
BASE = "localhost/pxo-base:bookworm"  # made by scripts/image.sh


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "image.sh")], check=True,
                       capture_output=True, timeout=1800)
    run = tmp_path_factory.mktemp("run")
    sock = run / "podman" / "podman.sock"
    sock.parent.mkdir()
    service = subprocess.Popen(["podman", "system", "service", "--time", "0", f"unix://{sock}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 15
    while not sock.exists() and time.monotonic() < end:
        time.sleep(0.05)
    try:
        yield run
    finally:
        service.terminate()
        service.wait(timeout=10)


def start(name: str) -> str:
    return subprocess.run([*RUN, "--name", name, BASE, "sleep", "120"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_names_come_from_the_list_the_events_and_a_direct_question(api: Path) -> None:
    before = start("pxo-names-before")
    indexes = runtime_indexes(api)
    assert list(indexes) == ["podman"]  # found by its socket under the given /run
    index = indexes["podman"]
    assert isinstance(index, DockerApiNames)
    index.start()
    try:
        after = start("pxo-names-after")  # seen by the event stream
        subprocess.run(["podman", "rm", "-f", "pxo-names-after"], capture_output=True, check=True)
        end = time.monotonic() + 10
        while index.status.names < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert index.lookup(before).name == "pxo-names-before"  # type: ignore[union-attr]
        found = index.lookup(after)  # removed already: its name was kept from the events
        assert found is not None and found.name == "pxo-names-after"
        assert index.status.connected and index.status.errors == 0
        started = time.monotonic()
        assert index.lookup("0" * 64) is None and time.monotonic() - started < 1.0  # unknown: quick
        # through the attributor, as the edge uses it
        attr = Attributor(runtimes=indexes)
        row = attr.attribute(f"/libpod_parent/libpod-{before}")
        assert (row["container_runtime"], row["container_id"], row["container"]) == (
            "podman", before, "pxo-names-before")
    finally:
        index.stop()
        subprocess.run(["podman", "rm", "-f", "pxo-names-before"], capture_output=True)


def test_a_runtime_that_is_down_is_a_status_not_an_error(tmp_path: Path) -> None:
    index = DockerApiNames("podman", tmp_path / "nothing.sock", retry=0.1)
    index.start()
    try:
        assert index.lookup("a" * 64) is None
        end = time.monotonic() + 5
        while index.status.errors == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert not index.status.connected and "nothing.sock" in index.status.last_error
    finally:
        index.stop()


def test_an_answer_not_shaped_as_expected_is_a_status_and_the_index_goes_on(tmp_path: Path) -> None:
    """A Docker API that answers the container list with an object (an error, another API) once
    ended the names thread for good (AttributeError): no container of that runtime was named
    again. Now it is an error in the status, retried; the next, proper list names them. The
    API here is a small server on a Unix socket of the test's own: podman never answers so."""
    import http.server
    import json
    import socketserver
    import threading

    cid = "c" * 64
    answers = iter([{"message": "not a list"}])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/containers/json"):
                body = json.dumps(next(answers, [{"Id": cid, "Names": ["/named-later"]}])).encode()
                self.send_response(200)
            else:  # the event stream ends at once; a direct question finds nothing
                body = b""
                self.send_response(200 if self.path.startswith("/events") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

    sock = tmp_path / "api.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = DockerApiNames("podman", sock, retry=0.1)
    index.start()
    try:
        end = time.monotonic() + 10
        while index.lookup(cid) is None and time.monotonic() < end:
            time.sleep(0.05)
        found = index.lookup(cid)
        assert found is not None and found.name == "named-later", index.status
        assert index.status.errors >= 1 and "has no attribute 'get'" in index.status.last_error
    finally:
        index.stop()
        server.shutdown()
        server.server_close()
