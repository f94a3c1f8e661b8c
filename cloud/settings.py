"""The cloud's settings: --flag or PXO_CLOUD_<NAME>, checked at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pxo.common.addr import split_hostport


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PXO_CLOUD_", cli_prog_name="pxo-cloud",
                                      cli_kebab_case=True, cli_implicit_flags=True)

    data_dir: Path = Field(Path("/var/lib/pxo/cloud"), description="directory of the metadata store (SQLite)")
    host: str = Field("127.0.0.1", description="address to serve HTTP on")
    port: int = Field(8700, ge=0, le=65535, description="port to serve HTTP on (0: any free port)")
    collector: str = Field("127.0.0.1:50700", description="collector host:port")
    query_timeout: float = Field(60.0, gt=0, description="seconds a query may take")
    log_level: str = Field("info", description="debug, info, warning or error")

    @field_validator("collector")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v, what="collector address")
        return v

    @property
    def db_path(self) -> Path:
        return self.data_dir / "cloud.sqlite"
