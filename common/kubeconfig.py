"""Where a kubeconfig is: one rule for the edge (pod names when it runs outside a cluster)
and the CLI (`pxo deploy --kubernetes`), as kubectl finds it: the files $KUBECONFIG lists
(os.pathsep between them; those that exist), else ~/.kube/config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def kubeconfig_files(environ: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The kubeconfig files that exist, in order; empty when there is none. Read at call time
    (not at import: a test or a shell may set KUBECONFIG after pxo started)."""
    env = os.environ if environ is None else environ
    listed = env.get("KUBECONFIG", "")
    if listed:
        candidates = [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    else:
        candidates = [(home if home is not None else Path(env.get("HOME") or Path.home())) / ".kube" / "config"]
    return [p for p in candidates if p.is_file()]
