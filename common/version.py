"""The installed pxo version (one source: pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version


def pxo_version() -> str:
    try:
        return version("pxo")
    except PackageNotFoundError:
        return "0+unknown"
