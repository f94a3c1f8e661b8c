#!/usr/bin/env bash
# The whole kernel matrix: Debian's bullseye (5.10), bookworm (6.1), trixie
# (6.12) and newest (sid) cloud kernels, each booted under qemu as a fresh node,
# with tests/kernels/test_scenarios.py run inside (two guests at a time), and
# bcc's oomkill and a bpftrace one-liner beside pxo on the same group kill
# (bench/oom_peers.py). Writes docs/kernels.md. About 17 minutes on 2 cores.
# scripts/test.sh runs the bookworm guest only (PXO_KERNELS to change that).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/kernels.sh" all
if ! command -v bpftrace >/dev/null; then  # a peer, for the comparison only
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bpftrace </dev/null
fi
cd "$ROOT"
peers=$(mktemp)
trap 'rm -f "$peers"' EXIT
.venv/bin/python bench/oom_peers.py --markdown "$peers" bullseye bookworm trixie sid
.venv/bin/python -m tests.helpers.matrix --write docs/kernels.md --peers "$peers" bullseye bookworm trixie sid
echo "kernel-matrix: wrote docs/kernels.md"
