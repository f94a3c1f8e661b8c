"""Mutual TLS for components started as processes (tests/helpers/services.py)."""

from __future__ import annotations

from pxo.common.tls import TlsFiles


def tls_args(f: TlsFiles) -> list[str]:
    """The command-line options that give a component its CA, certificate and key."""
    return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]
