"""Errors raised by the edge.

    EdgeError                 anything the edge reports to a person or a peer
    ├── PrerequisiteError     root, BCC, kernel headers or BTF missing
    ├── BtfError              (pxo.edge.btf) a type or member a probe needs is absent
    ├── StoreError            the DuckDB store cannot be opened or written
    └── FragmentError         a query fragment is refused or fails

Errors from bcc, duckdb and grpc are translated where they enter the edge
(``raise StoreError(...) from exc``) so that a person sees one sentence.
"""


class EdgeError(Exception):
    """Base of every error the edge reports."""


class PrerequisiteError(EdgeError):
    """The node lacks something an eBPF source needs; the message says how to fix it."""


class StoreError(EdgeError):
    """The node-local DuckDB store cannot be opened, read or written."""


class FragmentError(EdgeError):
    """A query fragment sent by the collector was refused or failed."""
