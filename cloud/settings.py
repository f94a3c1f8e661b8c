"""The cloud's settings: --flag or PXO_CLOUD_<NAME>, checked at start.

Outside development (``--environment production``) unsafe values are refused:
no cluster token, rate limiting or body limits switched off, an API docs page
served to the world is fine, but an unauthenticated collector is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from pxo.common.addr import split_hostport
from pxo.common.contract import MAX_QUERY_CHARS
from pxo.common.tls import TlsSettings

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # of a cluster or a user


class CloudSettings(TlsSettings):
    model_config = SettingsConfigDict(env_prefix="PXO_CLOUD_", cli_prog_name="pxo-cloud",
                                      cli_kebab_case=True, cli_implicit_flags=True)

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses unsafe settings (no cluster token, limits off)")
    data_dir: Path = Field(Path("/var/lib/pxo/cloud"), description="directory of the metadata store (SQLite)")
    host: str = Field("127.0.0.1", description="address to serve HTTP on")
    port: int = Field(8700, ge=0, le=65535, description="port to serve HTTP on (0: any free port)")
    collector: str = Field("127.0.0.1:50700",
                           description="the deploy-time collector host:port; it is the cluster named "
                                       "--cluster-name, the default cluster when there is none")
    cluster_name: str = Field("default", pattern=NAME_PATTERN,
                              description="name of the deploy-time collector's cluster")
    cluster_token: str = Field("", description="token sent to the deploy-time collector "
                                               "(prefer the env var PXO_CLOUD_CLUSTER_TOKEN to a flag)")
    query_timeout: float = Field(60.0, gt=0, description="seconds a query may take")
    log_level: str = Field("info", description="debug, info, warning or error")
    # -- request limits
    max_body_bytes: int = Field(64 * 1024, ge=0, description="largest request body (0: no limit)")
    max_query_length: int = Field(MAX_QUERY_CHARS, gt=0, le=MAX_QUERY_CHARS,
                                  description="longest query text, characters (no more than the collector takes)")
    rate_limit: float = Field(10.0, ge=0, description="requests per second per API key, sustained (0: no limit)")
    rate_burst: int = Field(60, ge=1, description="requests a key may send at once above the sustained rate")
    read_timeout: float = Field(15.0, gt=0, description="seconds a client may take to send its request body")
    limit_concurrency: int = Field(200, ge=1, description="connections served at once; more get 503")
    timeout_keep_alive: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection is kept")
    # -- mutual TLS to the deploy-time collector

    @field_validator("collector")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v, what="collector address")
        return v

    @model_validator(mode="after")
    def _safe_outside_development(self) -> CloudSettings:
        if self.environment == "development":
            return self
        problems = []
        if len(self.cluster_token) < 16:
            problems.append("a cluster token of at least 16 characters is required (PXO_CLOUD_CLUSTER_TOKEN)")
        if self.rate_limit == 0:
            problems.append("rate limiting cannot be off (--rate-limit 0)")
        if self.max_body_bytes == 0 or self.max_body_bytes > 16 * 1024 * 1024:
            problems.append("--max-body-bytes must be between 1 and 16 MiB")
        if self.log_level.lower() == "debug":
            problems.append("debug logging is for development")
        if problems:
            raise ValueError("unsafe for production: " + "; ".join(problems))
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / "cloud.sqlite"
