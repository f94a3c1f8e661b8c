#!/usr/bin/env bash
# The main job, end to end, on this machine (root):
#   install everything, deploy pxo locally (collector, edge, cloud on loopback),
#   cause one real OOM kill in a throw-away memory-limited cgroup, and ask pxo
#   about it (the kill, then why: pxo explain). pxo keeps running afterwards; stop it with: .venv/bin/pxo delete --local
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
PXO=$ROOT/.venv/bin/pxo

echo
echo '$ pxo deploy --local'
"$PXO" deploy --local
echo
echo '$ pxo oom-drill'
"$PXO" oom-drill
sleep 1   # the edge commits new rows at least every 0.5 s
echo
echo '$ pxo query "oom_events | last 1h"'
"$PXO" query "oom_events | last 1h"
echo
echo '$ pxo explain'
"$PXO" explain --window 2m
echo
echo "pxo is running. Try: $PXO nodes   |   stop it: $PXO delete --local"
