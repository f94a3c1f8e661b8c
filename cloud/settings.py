"""The cloud's settings: --flag or PXO_CLOUD_<NAME>, checked at start.

Outside development (``--environment production``) unsafe values are refused:
no cluster token, rate limiting or body limits switched off, an API docs page
served to the world is fine, but an unauthenticated collector is not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

from pxo.common.addr import hostport_check
from pxo.common.contract import MAX_QUERY_CHARS
from pxo.common.settings import setting
from pxo.common.tls import TlsSettings

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # of a cluster or a user


@dataclasses.dataclass(frozen=True)
class CloudSettings(TlsSettings):
    """Settings of the cloud; each can be given as --flag or PXO_CLOUD_<NAME>."""

    ENV_PREFIX: ClassVar[str] = "PXO_CLOUD_"
    PROG: ClassVar[str] = "pxo-cloud"

    environment: Literal["development", "production"] = setting(
        "development", help="production refuses unsafe settings (no cluster token, limits off)")
    data_dir: Path = setting(Path("/var/lib/pxo/cloud"), help="directory of the metadata store (SQLite)")
    host: str = setting("127.0.0.1", help="address to serve HTTP on")
    port: int = setting(8700, ge=0, le=65535, help="port to serve HTTP on (0: any free port)")
    collector: str = setting("127.0.0.1:50700", check=hostport_check(what="collector address"),
                             help="the deploy-time collector host:port; it is the cluster named "
                                  "--cluster-name, the default cluster when there is none")
    cluster_name: str = setting("default", pattern=NAME_PATTERN,
                                help="name of the deploy-time collector's cluster")
    cluster_token: str = setting("", help="token sent to the deploy-time collector "
                                          "(prefer the env var PXO_CLOUD_CLUSTER_TOKEN to a flag)")
    query_timeout: float = setting(60.0, gt=0, help="seconds a query may take")
    log_level: str = setting("info", help="debug, info, warning or error")
    # -- request limits
    max_body_bytes: int = setting(64 * 1024, ge=0, help="largest request body (0: no limit)")
    max_query_length: int = setting(MAX_QUERY_CHARS, gt=0, le=MAX_QUERY_CHARS,
                                    help="longest query text, characters (no more than the collector takes)")
    rate_limit: float = setting(10.0, ge=0, help="requests per second per API key, sustained (0: no limit)")
    rate_burst: int = setting(60, ge=1, help="requests a key may send at once above the sustained rate")
    read_timeout: float = setting(15.0, gt=0, help="seconds a client may take to send its request body")
    limit_concurrency: int = setting(200, ge=1, help="connections served at once; more get 503")
    timeout_keep_alive: float = setting(5.0, gt=0, help="seconds an idle keep-alive connection is kept")

    def validate(self) -> None:
        super().validate()  # mutual TLS to the deploy-time collector: all three or none
        if self.environment == "development":
            return
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

    @property
    def db_path(self) -> Path:
        return self.data_dir / "cloud.sqlite"
