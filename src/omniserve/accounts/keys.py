"""API keys: created with a secret shown once, stored only as a SHA-256 hash with a short
public id, and looked up in constant time.

``KeyStore`` is the table (used by the CLI and the server alike); every change bumps the
counter in ``key_state`` and, on PostgreSQL, notifies the ``omniserve_keys`` channel in the same
transaction. ``KeyRing`` is a server's view of the active keys, re-read whenever that counter
moved; ``omniserve.accounts.watch`` tells it when (see there).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from omniserve.accounts.schema import api_keys, key_state

SECRET_PREFIX = "sk-"
CHANNEL = "omniserve_keys"  # PostgreSQL NOTIFY channel for key changes


def now_ms() -> int:
    return int(time.time() * 1000)


def new_secret() -> str:
    """``sk-`` and 32 random bytes as hex, like the vendor's keys but longer."""
    return SECRET_PREFIX + secrets.token_hex(32)


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits, so a fast hash is safe (no dictionary to attack) and a
    # lookup stays cheap.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored; limits: ``None`` is the default, 0 is no limit."""

    id: str
    name: str
    hint: str
    created_ms: int
    updated_ms: int
    revoked_ms: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    quota_tokens: int | None = None
    sessions: int | None = None  # realtime sessions open at once
    models: tuple[str, ...] = ()
    admin: bool = False
    used_tokens: int = 0
    secret_hash: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_ms is None

    def allows_model(self, name: str) -> bool:
        return not self.models or name in self.models


def _row_to_key(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        hint=m["hint"],
        created_ms=m["created_ms"],
        updated_ms=m["updated_ms"],
        revoked_ms=m["revoked_ms"],
        rpm=m["rpm"],
        tpm=m["tpm"],
        concurrency=m["concurrency"],
        quota_tokens=m["quota_tokens"],
        sessions=m["sessions"],
        models=tuple(x for x in (m["models"] or "").split(",") if x),
        admin=bool(m["admin"]),
        used_tokens=int(m["used_tokens"] or 0),
        secret_hash=m["secret_hash"],
    )


class KeyNotFound(LookupError):
    pass


# Fields ``update`` may change.
UPDATABLE = ("name", "rpm", "tpm", "concurrency", "quota_tokens", "sessions", "models", "admin")


class KeyStore:
    """Create, list, update and revoke keys; every change bumps ``key_state.version``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(sa.update(key_state).values(version=key_state.c.version + 1))
        if conn.dialect.name == "postgresql":
            # Delivered to every listening server when this transaction commits.
            version = conn.execute(sa.select(key_state.c.version)).scalar_one()
            conn.execute(sa.select(sa.func.pg_notify(CHANNEL, str(version))))

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        concurrency: int | None = None,
        quota_tokens: int | None = None,
        sessions: int | None = None,
        models: tuple[str, ...] = (),
        admin: bool = False,
    ) -> tuple[ApiKey, str]:
        """The new key and its secret (the only time the secret exists outside a client)."""
        secret = new_secret()
        stamp = now_ms()
        key = ApiKey(
            id=new_key_id(),
            name=name,
            hint=f"{SECRET_PREFIX}…{secret[-4:]}",
            created_ms=stamp,
            updated_ms=stamp,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            quota_tokens=quota_tokens,
            sessions=sessions,
            models=models,
            admin=admin,
            secret_hash=hash_secret(secret),
        )
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(api_keys).values(
                    id=key.id,
                    name=key.name,
                    secret_hash=key.secret_hash,
                    hint=key.hint,
                    created_ms=stamp,
                    updated_ms=stamp,
                    revoked_ms=None,
                    rpm=rpm,
                    tpm=tpm,
                    concurrency=concurrency,
                    quota_tokens=quota_tokens,
                    sessions=sessions,
                    models=",".join(models),
                    admin=admin,
                    used_tokens=0,
                )
            )
            self._bump(conn)
        return key, secret

    def all(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_ms, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_ms.is_(None))
        with self.engine.connect() as conn:
            return [_row_to_key(r) for r in conn.execute(query)]

    def get(self, key_id: str) -> ApiKey:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise KeyNotFound(key_id)
        return _row_to_key(row)

    def update(self, key_id: str, **changes: Any) -> ApiKey:
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = dict(changes)
        if "models" in values:
            values["models"] = ",".join(values["models"])
        values["updated_ms"] = now_ms()
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(**values))
            if done.rowcount == 0:
                raise KeyNotFound(key_id)
            self._bump(conn)
        return self.get(key_id)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoked keys stay listed (the ledger refers to them) but never authenticate again."""
        stamp = now_ms()
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked_ms=sa.func.coalesce(api_keys.c.revoked_ms, stamp), updated_ms=stamp)
            )
            if done.rowcount == 0:
                raise KeyNotFound(key_id)
            self._bump(conn)
        return self.get(key_id)

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(key_state.c.version)).scalar_one())

    def active(self) -> tuple[int, list[ApiKey], bool]:
        """The change counter, the active keys, and whether any key (revoked too) exists."""
        with self.engine.connect() as conn:
            version = int(conn.execute(sa.select(key_state.c.version)).scalar_one())
            rows = conn.execute(sa.select(api_keys).where(api_keys.c.revoked_ms.is_(None)))
            keys = [_row_to_key(r) for r in rows]
            any_key = keys or conn.execute(sa.select(api_keys.c.id).limit(1)).first()
            return version, keys, bool(any_key)


class KeyRing:
    """The active keys by hash, refreshed when the stored change counter differs.

    The state is one immutable snapshot swapped in whole, so a refresh on another thread never
    shows a request half of the old keys and half of the new.
    """

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        # (version, keys by hash, required). Once any key was created, auth applies, even
        # after the last one is revoked.
        self._state: tuple[int, dict[str, ApiKey], bool] = (-1, {}, False)

    @property
    def version(self) -> int:
        return self._state[0]

    @property
    def required(self) -> bool:
        return self._state[2]

    def refresh(self, version: int | None = None) -> bool:
        """Re-reads the keys unless ``version`` is the one held; True when they changed."""
        if version is not None and version == self.version:
            return False
        new_version, keys, any_key = self.store.active()
        if new_version == self.version:
            return False
        self._state = (new_version, {k.secret_hash: k for k in keys}, any_key)
        return True

    def check(self) -> bool:
        """One small query: have the keys changed since the last read? Re-read if so."""
        return self.refresh(self.store.version())

    def find(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        key = self._state[1].get(digest)
        if key is None or not hmac.compare_digest(key.secret_hash, digest):
            return None
        return key
