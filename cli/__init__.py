"""The `pxo` command line."""
