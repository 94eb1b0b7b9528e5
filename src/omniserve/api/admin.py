"""``/admin/...``: keys and usage over HTTP, for operators holding an admin key.

The same operations as ``omniserve keys`` and ``omniserve usage``, for deployments where the
database is not at hand (containers, several replicas).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

from anyio.to_thread import run_sync
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from omniserve.accounts.keys import ApiKey, KeyNotFound, KeyStore
from omniserve.accounts.service import Accounts
from omniserve.accounts.usage import GroupBy, totals, usage_report
from omniserve.api.auth import guard
from omniserve.api.errors import error_response
from omniserve.errors import NotFound

T = TypeVar("T")
INT32 = 2**31 - 1  # rpm, tpm, concurrency and sessions are 32-bit columns

router = APIRouter(prefix="/admin", dependencies=[Depends(guard("admin"))])


INT64 = 2**63 - 1  # quota_tokens and times are 64-bit columns


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
ModelName = Annotated[Text, Field(min_length=1, max_length=100)]


class KeyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the default (the model's catalog limit for rpm and tpm, none otherwise); 0: none.
    rpm: int | None = Field(default=None, ge=0, le=INT32)
    tpm: int | None = Field(default=None, ge=0, le=INT32)
    concurrency: int | None = Field(default=None, ge=0, le=INT32)
    quota_tokens: int | None = Field(default=None, ge=0, le=INT64)
    sessions: int | None = Field(default=None, ge=0, le=INT32)
    models: list[ModelName] = Field(default_factory=list, max_length=100)
    admin: bool = False


class NewKey(KeyLimits):
    name: Text = Field(min_length=1, max_length=200)


class KeyChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(default=None, min_length=1, max_length=200)
    rpm: int | None = Field(default=None, ge=0, le=INT32)
    tpm: int | None = Field(default=None, ge=0, le=INT32)
    concurrency: int | None = Field(default=None, ge=0, le=INT32)
    quota_tokens: int | None = Field(default=None, ge=0, le=INT64)
    sessions: int | None = Field(default=None, ge=0, le=INT32)
    models: list[ModelName] | None = Field(default=None, max_length=100)
    admin: bool | None = None


def key_object(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it: never its secret or hash."""
    out = asdict(key)
    del out["secret_hash"]
    out["models"] = list(key.models)
    out["active"] = key.active
    return out


def _store(request: Request) -> KeyStore:
    accounts: Accounts = request.app.state.accounts
    assert accounts.store is not None
    return accounts.store


async def _change(request: Request, change: Callable[[KeyStore], T]) -> T:
    """Applies a key change and this server's view of the keys with it (other replicas learn
    of it from the database)."""
    accounts: Accounts = request.app.state.accounts
    store = _store(request)

    def apply() -> T:
        result = change(store)
        if accounts.ring is not None:
            accounts.ring.refresh()
        return result

    return await run_sync(apply)


@router.get("/keys", summary="List API keys")
async def list_keys(request: Request, include_revoked: bool = False) -> Response:
    keys = await run_sync(lambda: _store(request).all(include_revoked=include_revoked))
    return JSONResponse({"object": "list", "data": [key_object(k) for k in keys]})


@router.post("/keys", summary="Create an API key (the secret is returned once)")
async def create_key(request: Request, body: NewKey) -> Response:
    values = body.model_dump()
    name = values.pop("name")
    values["models"] = tuple(values["models"])
    key, secret = await _change(request, lambda store: store.create(name, **values))
    return JSONResponse({**key_object(key), "secret": secret}, status_code=201)


@router.patch("/keys/{key_id}", summary="Change an API key's name, limits or models")
async def update_key(request: Request, key_id: str, body: KeyChanges) -> Response:
    changes = body.model_dump(exclude_unset=True)
    if "models" in changes:
        changes["models"] = tuple(changes["models"] or ())
    try:
        key = await _change(request, lambda store: store.update(key_id, **changes))
    except KeyNotFound:
        return error_response(NotFound(f"The API key {key_id} does not exist."))
    return JSONResponse(key_object(key))


@router.post("/keys/{key_id}/revoke", summary="Revoke an API key, at once, everywhere")
async def revoke_key(request: Request, key_id: str) -> Response:
    try:
        key = await _change(request, lambda store: store.revoke(key_id))
    except KeyNotFound:
        return error_response(NotFound(f"The API key {key_id} does not exist."))
    return JSONResponse(key_object(key))


@router.get("/usage", summary="Usage and cost from the ledger")
async def usage(
    request: Request,
    by: GroupBy = "model",
    key: str | None = None,
    since_ms: Annotated[int | None, Query(ge=0, le=INT64)] = None,
) -> Response:
    engine = _store(request).engine
    lines = await run_sync(lambda: usage_report(engine, by=by, key_id=key, since_ms=since_ms))
    accounts: Accounts = request.app.state.accounts
    return JSONResponse(
        {
            "by": by,
            "price_region": accounts.settings.price_region,
            "data": [asdict(x) for x in lines],
            "total": asdict(totals(lines)),
        }
    )
