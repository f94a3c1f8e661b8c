"""Moved to tests/helpers/sink.py. This name stays only for bench/oom_peers.py, which imports
it inside the kernel guest; delete it once that imports tests.helpers.sink."""

from tests.helpers.sink import ListSink

__all__ = ["ListSink"]
