#!/usr/bin/env bash
# The whole test suite: installs what is needed (scripts/setup.sh), then runs
# pytest. Tests that load eBPF programs and cause real OOM kills need root;
# with CI=true they fail rather than skip when eBPF is unavailable.
# Extra arguments go to pytest (e.g. scripts/test.sh -k collector).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
