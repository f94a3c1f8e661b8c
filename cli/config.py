"""Where the CLI finds its cloud and key.

A JSON file in the user's config directory ($XDG_CONFIG_HOME/pxo/config.json,
by default ~/.config/pxo/config.json), mode 0600 because it holds an API key.
PXO_API_URL and PXO_API_KEY override it, for scripts and CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pxo.cli.errors import CliError


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pxo" / "config.json"


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pxo"


@dataclass
class Config:
    api_url: str = ""
    api_key: str = ""
    local_data_dir: str = ""  # set by `pxo deploy --local`
    containers_data_dir: str = ""  # set by `pxo deploy --containers`

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the config file {path}: {exc}") from exc
        cfg = cls(**{k: str(v) for k, v in raw.items() if k in cls.__dataclass_fields__})
        cfg.api_url = os.environ.get("PXO_API_URL") or cfg.api_url
        cfg.api_key = os.environ.get("PXO_API_KEY") or cfg.api_key
        return cfg

    def save(self, path: Path | None = None) -> Path:
        path = path or config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path
