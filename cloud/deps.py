"""What the routes depend on, as FastAPI dependencies: the cloud's context (settings, the
metadata store, the collectors pool, the limits; made once by create_app and kept on
``app.state.ctx``), and the caller behind the request's API key with its role:

    viewer   query, tables, nodes, clusters (list), whoami
    admin    all of that, and users, keys and clusters (add, remove)

401 means no valid key (missing, malformed, unknown, revoked, or its user disabled);
429 a valid key over its rate; 403 a valid key whose role may not do this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from pxo.cloud import keys
from pxo.cloud.collectors import Collectors
from pxo.cloud.db import Database, KeyRecord, User
from pxo.cloud.errors import Forbidden, Unauthorized
from pxo.cloud.limits import FollowSlots, RateLimiter
from pxo.cloud.metrics import CloudMetrics
from pxo.cloud.models import NAME_MAX
from pxo.cloud.settings import CloudSettings


@dataclass(frozen=True)
class CloudContext:
    """Everything the routes share; one per app."""

    settings: CloudSettings
    db: Database
    collectors: Collectors
    limiter: RateLimiter  # requests per key
    follows: FollowSlots  # follow streams at once
    metrics: CloudMetrics


def context(request: Request) -> CloudContext:
    ctx: CloudContext = request.app.state.ctx
    return ctx


Context = Annotated[CloudContext, Depends(context)]


def settings(ctx: Context) -> CloudSettings:
    return ctx.settings


def database(ctx: Context) -> Database:
    return ctx.db


def collectors(ctx: Context) -> Collectors:
    return ctx.collectors


def follow_slots(ctx: Context) -> FollowSlots:
    return ctx.follows


Settings = Annotated[CloudSettings, Depends(settings)]
Db = Annotated[Database, Depends(database)]
Pool = Annotated[Collectors, Depends(collectors)]
Follows = Annotated[FollowSlots, Depends(follow_slots)]
ClusterParam = Annotated[str, Query(max_length=NAME_MAX,
                                    description="the cluster to ask (default: the default cluster)")]


# -- the caller ------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: User
    key_id: str

    @property
    def role(self) -> str:
        return self.user.role


def api_key(request: Request, db: Db) -> KeyRecord:
    """The record of the request's API key; 401 for a missing, malformed, unknown or revoked one."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    record = keys.verify(db, token.strip())
    if record is None:
        raise Unauthorized("invalid or revoked API key")
    return record


def caller(record: Annotated[KeyRecord, Depends(api_key)], ctx: Context) -> Caller:
    """The caller behind a valid key, within the key's rate (429 over it); the key's use is recorded."""
    ctx.limiter.admit(record.id)
    ctx.db.touch_key(record.id)
    return Caller(record.user, record.id)


def viewer(who: Annotated[Caller, Depends(caller)]) -> Caller:
    return who  # every role may read


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.role != "admin":
        raise Forbidden(f"this needs the admin role; key {who.key_id} of user {who.user.name!r} "
                        f"has the {who.role} role")
    return who


Viewer = Annotated[Caller, Depends(viewer)]
Admin = Annotated[Caller, Depends(admin)]
