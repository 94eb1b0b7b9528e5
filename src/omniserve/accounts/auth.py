"""Authentication: who is calling. A bearer key is looked up among the server's keys; a server
with no keys answers everyone as the anonymous caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omniserve.accounts.keys import ApiKey, KeyRing
from omniserve.errors import AccessDenied, InvalidApiKey, MalformedApiKey, MissingApiKey

AuthLevel = Literal["public", "key", "admin"]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller; ``key`` is None on a server without keys."""

    key: ApiKey | None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def may_use(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)


ANONYMOUS = Caller(None)


def authenticate(ring: KeyRing, authorization: str | None, level: AuthLevel) -> Caller:
    """The caller of a route at ``level`` among the keys of ``ring``; raises the API's
    401/403 errors."""
    if level == "public" or not ring.required:
        return ANONYMOUS
    if authorization is None or not authorization.strip():
        raise MissingApiKey()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise MalformedApiKey()
    key = ring.find(token)
    if key is None:
        raise InvalidApiKey()
    if level == "admin" and not key.admin:
        raise AccessDenied()
    return Caller(key)
