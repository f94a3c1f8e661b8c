#!/usr/bin/env bash
# The machine checks of the code: mypy --strict, and the layer rules as import-linter
# contracts (both configured in pyproject.toml), over pxo as it is installed (pxo.edge,
# pxo.collector, ...: the source folders are linked into a pxo/ tree first).
# tests/test_types.py runs this; so can you:
#   bash scripts/typecheck.sh            (all of pxo, and the import contracts)
#   bash scripts/typecheck.sh pxo.cloud  (mypy on one package only)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/pxo/cri"
for d in edge collector cloud cli common bpf; do ln -s "$ROOT/$d" "$tree/pxo/$d"; done
ln -s "$ROOT/proto/pxo/v1" "$tree/pxo/v1"
ln -s "$ROOT/proto/pxo/cri/v1" "$tree/pxo/cri/v1"
cd "$tree"
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(pxo)
args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
status=0
MYPYPATH="$tree" "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" --cache-dir /tmp/pxo-mypy-cache \
    "${args[@]}" || status=$?
if [ $# -eq 0 ]; then
    PYTHONPATH="$tree" "$ROOT/.venv/bin/lint-imports" --config "$ROOT/pyproject.toml" --no-cache || status=$?
fi
exit $status
