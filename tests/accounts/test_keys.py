"""Keys: secrets shown once and stored hashed; the ring sees changes made elsewhere."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from omniserve.accounts.keys import KeyNotFound, KeyRing, KeyStore, hash_secret


def test_create_returns_the_secret_once_and_stores_only_its_hash(engine: Engine) -> None:
    store = KeyStore(engine)
    key, secret = store.create("ci", rpm=10, models=("qwen-omni-turbo",))
    assert secret.startswith("sk-") and len(secret) == 3 + 64
    assert key.id.startswith("key_") and key.hint == f"sk-…{secret[-4:]}"
    with engine.connect() as conn:
        dump = " ".join(
            str(v) for row in conn.execute(sa.text("SELECT * FROM api_keys")) for v in row
        )
    assert secret not in dump and hash_secret(secret) in dump
    again = store.get(key.id)
    assert again.rpm == 10 and again.models == ("qwen-omni-turbo",) and again.active


def test_two_keys_never_share_a_secret_or_id(engine: Engine) -> None:
    store = KeyStore(engine)
    made = [store.create(f"k{i}") for i in range(20)]
    assert len({k.id for k, _ in made}) == 20 and len({s for _, s in made}) == 20


def test_ring_finds_keys_and_follows_changes_made_by_another_store(engine: Engine) -> None:
    server = KeyRing(KeyStore(engine))
    cli = KeyStore(engine)  # another process's view of the same database
    server.refresh()
    assert not server.required
    key, secret = cli.create("alice")
    assert server.find(secret) is None  # not yet seen
    assert server.check() is True
    assert server.required and server.find(secret) == cli.get(key.id)
    assert server.find(secret + "x") is None and server.find("sk-" + "0" * 64) is None
    assert server.check() is False  # nothing changed, nothing re-read
    cli.update(key.id, tpm=500)
    assert server.check() and server.find(secret).tpm == 500  # type: ignore[union-attr]
    cli.revoke(key.id)
    assert server.check() and server.find(secret) is None
    assert server.required, "revoking the last key must not open the server"


def test_update_and_revoke(engine: Engine) -> None:
    store = KeyStore(engine)
    key, _ = store.create("bob", quota_tokens=1000)
    changed = store.update(key.id, name="robert", quota_tokens=None, models=("a", "b"), admin=True)
    assert (changed.name, changed.quota_tokens, changed.models, changed.admin) == (
        "robert",
        None,
        ("a", "b"),
        True,
    )
    revoked = store.revoke(key.id)
    assert revoked.revoked_ms is not None
    assert store.revoke(key.id).revoked_ms == revoked.revoked_ms  # the first revocation stands
    assert [k.id for k in store.all()] == []
    assert [k.id for k in store.all(include_revoked=True)] == [key.id]
    with pytest.raises(KeyNotFound):
        store.revoke("key_missing")
    with pytest.raises(KeyNotFound):
        store.update("key_missing", name="x")
    with pytest.raises(ValueError, match="cannot update"):
        store.update(key.id, secret_hash="x")


def test_model_restriction() -> None:
    from omniserve.accounts.keys import ApiKey

    open_key = ApiKey(id="key_a", name="a", hint="", created_ms=0, updated_ms=0)
    narrow = ApiKey(id="key_b", name="b", hint="", created_ms=0, updated_ms=0, models=("m1",))
    assert open_key.allows_model("anything")
    assert narrow.allows_model("m1") and not narrow.allows_model("m2")
