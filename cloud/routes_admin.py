"""The admin routes: clusters (listing them is for viewers too), users and API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from pxo.cloud import keys
from pxo.cloud.db import Database
from pxo.cloud.deps import Admin, Db, Viewer
from pxo.cloud.errors import BadRequest, Conflict, NotFound
from pxo.cloud.models import (
    ERRORS,
    NAME_MAX,
    ClusterIn,
    ClusterOut,
    KeyIn,
    KeyOut,
    NewKeyOut,
    NewUserOut,
    UserIn,
    UserOut,
    errors,
)

router = APIRouter(prefix="/api/v1")


# -- clusters ----------------------------------------------------------------------


@router.get("/clusters", response_model=list[ClusterOut], responses=ERRORS, tags=["clusters"])
def list_clusters(caller: Viewer, db: Db) -> list[ClusterOut]:
    """The collectors this cloud fronts; a query names one or goes to the default."""
    return [ClusterOut.of(c) for c in db.clusters()]


@router.post("/clusters", status_code=201, response_model=ClusterOut, responses=ERRORS, tags=["clusters"])
def put_cluster(body: ClusterIn, caller: Admin, db: Db) -> ClusterOut:
    """Add a cluster (or change its address, token, TLS files or default flag). Admin only."""
    from pxo.common.tls import TlsError, material_from_pem

    try:
        material_from_pem(body.tls_ca, body.tls_cert, body.tls_key)
    except TlsError as exc:
        raise BadRequest(f"TLS: {exc}") from None
    return ClusterOut.of(db.put_cluster(body.name, body.address, body.token, make_default=body.default,
                                        tls=(body.tls_ca, body.tls_cert, body.tls_key)))


@router.delete("/clusters/{name}", status_code=204, responses=errors(404, 409), tags=["clusters"])
def delete_cluster(name: str, caller: Admin, db: Db) -> Response:
    """Forget a cluster (not the default one). Admin only."""
    if not db.delete_cluster(name):  # the default one: a Conflict, answered 409
        raise NotFound(f"no cluster named {name!r}")
    return Response(status_code=204)


# -- users -------------------------------------------------------------------------


def _user(db: Database, name: str) -> UserOut:
    found = [u for u in db.users() if u.name == name]
    if not found:
        raise NotFound(f"no user named {name!r}")
    return UserOut.of(found[0])


def _new_key(db: Database, key: str) -> NewKeyOut:
    key_id = keys.key_id(key)
    return NewKeyOut.made(next(k for k in db.list_keys() if k.id == key_id), key)


@router.get("/users", response_model=list[UserOut], responses=ERRORS, tags=["users"])
def list_users(caller: Admin, db: Db) -> list[UserOut]:
    """Every user, disabled ones included. Admin only."""
    return [UserOut.of(u) for u in db.users()]


@router.post("/users", status_code=201, response_model=NewUserOut, responses=errors(409), tags=["users"])
def create_user(body: UserIn, caller: Admin, db: Db) -> NewUserOut:
    """Create a user and its first API key (shown this once). Admin only."""
    user = db.create_user(body.name, body.role)  # a name taken: a Conflict, answered 409
    key = keys.create_key(db, user, "first key")
    return NewUserOut(user=_user(db, user.name), key=_new_key(db, key))


@router.delete("/users/{name}", status_code=204, responses=errors(404, 409), tags=["users"])
def delete_user(name: str, caller: Admin, db: Db) -> Response:
    """Disable a user and revoke all its keys at once (not yourself, not the last admin). Admin only."""
    if name == caller.user.name:
        raise Conflict("you cannot remove yourself: ask another admin")
    if not db.disable_user(name):  # the last admin: a Conflict, answered 409
        raise NotFound(f"no active user named {name!r}")
    return Response(status_code=204)


# -- keys --------------------------------------------------------------------------


@router.get("/keys", response_model=list[KeyOut], responses=ERRORS, tags=["keys"])
def list_keys(caller: Admin, db: Db, user: Annotated[str, Query(max_length=NAME_MAX)] = "") -> list[KeyOut]:
    """Every key's visible prefix, owner, label and state (never the key). Admin only."""
    return [KeyOut.of(k) for k in db.list_keys(user=user or None)]


@router.post("/keys", status_code=201, response_model=NewKeyOut, responses=errors(404), tags=["keys"])
def create_key(body: KeyIn, caller: Admin, db: Db) -> NewKeyOut:
    """A new key for a user (default: the caller); the key is in this answer only. Admin only."""
    user = db.user_by_name(body.user) if body.user else caller.user
    if user is None:
        raise NotFound(f"no active user named {body.user!r}")
    return _new_key(db, keys.create_key(db, user, body.label))


@router.delete("/keys/{key_id}", status_code=204, responses=errors(404), tags=["keys"])
def revoke_key(key_id: str, caller: Admin, db: Db) -> Response:
    """Revoke a key by its visible prefix (pxo_xxxxxxxx); it is refused from the next request on."""
    if not keys.KEY_ID_RE.match(key_id) or not db.revoke_key(key_id):
        raise NotFound(f"no active key {key_id!r}")
    return Response(status_code=204)
