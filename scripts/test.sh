#!/usr/bin/env bash
# The whole test suite: installs what is needed (scripts/setup.sh, and the
# guest kernels of tests/kernels: scripts/kernels.sh), then runs pytest. Tests that load eBPF programs and cause real OOM kills need root;
# with CI=true they fail rather than skip when eBPF is unavailable.
# Extra arguments go to pytest (e.g. scripts/test.sh -k collector).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
# The kernel matrix's guest in the suite (tests/kernels): Debian 12's 6.1, booted under qemu.
bash "$ROOT/scripts/kernels.sh" ${PXO_KERNELS:-bookworm}
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
