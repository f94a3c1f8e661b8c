"""The REST API's request and answer models (pydantic), and the error answers each route
documents; the OpenAPI document at /openapi.json is made from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pxo.cloud.db import Cluster, KeyInfo, UserInfo
from pxo.cloud.settings import NAME_PATTERN
from pxo.common.contract import MAX_QUERY_CHARS

NAME_MAX = 63  # NAME_PATTERN's longest
ROW_LIMIT_MAX = 10_000_000


# -- data ------------------------------------------------------------------------


class QueryIn(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=["oom_events | last 1h"])
    sql: bool = Field(False, strict=True, description="the query is SQL (SELECT ...) rather than the pipe form")
    row_limit: int = Field(0, ge=0, le=ROW_LIMIT_MAX, strict=True,
                           description="most rows to return (0: the collector's cap)")
    cluster: str = Field("", max_length=NAME_MAX, description="the cluster to ask ('': the default cluster)")


class FollowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # e.g. "sql": there is no SQL form of follow

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=['oom_events | where namespace == "prod"'],
                       description="a pipe query of a table, an optional range (its stored rows come first), "
                                   "and where, project, project-away, extend")
    row_limit: int = Field(0, ge=0, le=ROW_LIMIT_MAX, strict=True,
                           description="most stored rows per node before the live ones (0: the collector's cap)")
    cluster: str = Field("", max_length=NAME_MAX, description="the cluster to ask ('': the default cluster)")


class ColumnOut(BaseModel):
    name: str
    type: str


class NodeStatusOut(BaseModel):
    node: str
    state: str  # ok | failed | timed_out | down | skipped
    detail: str
    rows: int


class QueryOut(BaseModel):  # what a JSON answer holds: documented here, streamed by formats.JsonWriter
    columns: list[ColumnOut]
    rows: list[list[Any]]
    nodes: list[NodeStatusOut]
    partial: bool
    truncated: bool
    range: dict[str, str | None] | None
    row_count: int
    approximate_columns: list[str] = Field(description="columns computed from a mergeable sketch (percentiles)")
    relative_error: float = Field(description="each approximate value is within this relative error")
    cluster: str


class TableColumnOut(BaseModel):
    name: str
    type: str
    description: str


class TableOut(BaseModel):
    name: str
    description: str
    columns: list[TableColumnOut]


# -- identity, users, keys, clusters -----------------------------------------------


class WhoAmIOut(BaseModel):
    user: str
    role: str
    key: str = Field(description="the visible prefix of the key used")


class UserIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["alice"])
    role: Literal["admin", "viewer"] = "viewer"


class UserOut(BaseModel):
    name: str
    role: str
    created_at: float
    disabled_at: float | None
    active_keys: int

    @classmethod
    def of(cls, u: UserInfo) -> UserOut:
        return cls.model_validate(u, from_attributes=True)


class KeyIn(BaseModel):
    user: str = Field("", max_length=NAME_MAX, description="whose key ('': the caller's)")
    label: str = Field("", max_length=200, description="what the key is for")


class KeyOut(BaseModel):
    id: str = Field(description="the visible prefix; the key itself is never stored")
    user: str
    role: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @classmethod
    def of(cls, k: KeyInfo) -> KeyOut:
        return cls.model_validate(k, from_attributes=True)


class NewKeyOut(KeyOut):
    key: str = Field(description="the key: shown this once, store it now")

    @classmethod
    def made(cls, k: KeyInfo, key: str) -> NewKeyOut:
        return cls(**KeyOut.of(k).model_dump(), key=key)


class NewUserOut(BaseModel):
    user: UserOut
    key: NewKeyOut


class ClusterIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["prod-eu"])
    address: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$",
                         examples=["10.0.0.5:50700"])
    token: str = Field("", max_length=512, description="the collector's cluster token (never shown again)")
    default: bool = Field(False, strict=True, description="make it the default cluster")
    # mutual TLS to the collector: all three or none (plain gRPC). `pxo deploy --kubernetes` puts them in
    # the Secret pxo-tls-cloud of the cluster's namespace pxo (ca.crt, tls.crt, tls.key).
    tls_ca: str = Field("", max_length=16_384, description="the cluster CA certificate(s) (PEM)")
    tls_cert: str = Field("", max_length=16_384, description="the certificate the cloud presents (PEM, role "
                          "pxo-cloud, signed by the cluster CA)")
    tls_key: str = Field("", max_length=16_384, description="its private key (PEM, unencrypted; stored by the "
                         "cloud, never shown again)")


class ClusterOut(BaseModel):
    name: str
    address: str
    default: bool
    authenticated: bool = Field(description="a cluster token is sent to this collector")
    tls: bool = Field(False, description="the collector is reached with mutual TLS (certificates set)")

    @classmethod
    def of(cls, c: Cluster) -> ClusterOut:
        # never the token, the key nor the certificates
        return cls(name=c.name, address=c.address, default=c.is_default, authenticated=bool(c.token), tls=c.tls)


# -- errors ------------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: dict[str, Any]


Responses = dict[int | str, dict[str, Any]]

# What any route with a key may answer besides its own errors.
ERRORS: Responses = {
    400: {"model": ErrorOut, "description": "the body is not JSON"},
    401: {"model": ErrorOut, "description": "no valid API key"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    404: {"model": ErrorOut, "description": "no such cluster, user or key"},
    413: {"model": ErrorOut, "description": "the body is too large"},
    422: {"model": ErrorOut, "description": "the request does not match the schema"},
    429: {"model": ErrorOut, "description": "rate limited (see Retry-After)"},
}


def errors(*statuses: int, described: dict[int, str] | None = None) -> Responses:
    """ERRORS and a route's own: ``statuses`` with the status's standard description, ``described`` with one."""
    own: Responses = {s: {"model": ErrorOut} for s in statuses}
    own.update({s: {"model": ErrorOut, "description": d} for s, d in (described or {}).items()})
    return {**ERRORS, **own}
