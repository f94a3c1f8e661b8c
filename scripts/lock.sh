#!/usr/bin/env bash
# Regenerate the locked dependencies in requirements/ from pyproject.toml:
#   test.txt     everything the test suite installs (pxo's dependencies and the test extra)
#   runtime.txt  what the container image installs: the same versions, without the test extra
#   build.txt    what building pxo itself needs (setuptools, grpcio-tools: [build-system])
# Every line is pinned with its hashes; scripts/setup.sh and deploy/Dockerfile install with
# pip --require-hashes, so a fresh machine and the image get exactly what CI tested.
# Run it after changing a dependency in pyproject.toml (it needs network access to PyPI):
#   bash scripts/lock.sh            # keep today's versions where pyproject.toml allows them
#   bash scripts/lock.sh --upgrade  # move every package to the newest version allowed
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -x .venv/bin/python ] || { echo "lock.sh: run scripts/setup.sh first (it makes .venv)" >&2; exit 1; }
.venv/bin/python -m pip install -q 'uv>=0.5' </dev/null
UV=.venv/bin/uv
# The interpreter the image and the machines use: Debian bookworm's python3 (3.11, glibc 2.36).
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_36 --generate-hashes --quiet)
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)
$UV pip compile pyproject.toml --extra test "${target[@]}" "${upgrade[@]}" -o requirements/test.txt
$UV pip compile pyproject.toml "${target[@]}" -c requirements/test.txt -o requirements/runtime.txt
printf 'setuptools>=69\ngrpcio-tools>=1.66,<2\n' > requirements/build.in
$UV pip compile requirements/build.in "${target[@]}" "${upgrade[@]}" -c requirements/test.txt -o requirements/build.txt
echo "lock.sh: requirements/test.txt, runtime.txt and build.txt written"
