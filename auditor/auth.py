"""API keys: `aud_<prefix>_<secret>`. The prefix is stored in clear so a key can be found (and
shown in listings) without scanning; only the SHA-256 of the secret is kept. The secret has 256
bits of entropy, so a plain hash is as strong as a slow one and costs nothing per request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.models import ApiKey, ApiScope, Dataset, utcnow

KEY_MARK = "aud"
SCOPE_RANK = {ApiScope.READ: 0, ApiScope.REVIEW: 1, ApiScope.ADMIN: 2}


class AuthError(Exception):
    """A missing, malformed, unknown or revoked key."""


class ScopeError(Exception):
    """A valid key without the scope or the dataset access the request needs."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a scope, and optionally one dataset (and one vendor within it)."""

    scope: ApiScope
    key_id: int | None = None
    dataset_id: int | None = None
    vendor: str | None = None

    @property
    def name(self) -> str:
        return f"key:{self.key_id}" if self.key_id is not None else "local"

    def require(self, scope: ApiScope) -> None:
        if SCOPE_RANK[self.scope] < SCOPE_RANK[scope]:
            raise ScopeError(f"this key has scope {self.scope.value!r}; {scope.value!r} is needed")

    def can_see(self, dataset_id: int) -> bool:
        return self.dataset_id is None or self.dataset_id == dataset_id


LOCAL_ADMIN = Principal(scope=ApiScope.ADMIN)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session,
    scope: str,
    dataset_id: int | None = None,
    vendor: str | None = None,
    name: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with the only copy of its plaintext."""
    scope = ApiScope(scope)
    if vendor is not None and dataset_id is None:
        raise ValueError("a vendor key must be limited to a dataset (--dataset)")
    if dataset_id is not None and session.get(Dataset, dataset_id) is None:
        raise LookupError(f"dataset {dataset_id} does not exist")
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(
        prefix=prefix,
        secret_hash=hash_secret(secret),
        scope=scope.value,
        dataset_id=dataset_id,
        vendor=vendor,
        name=name,
    )
    session.add(key)
    session.flush()
    return key, f"{KEY_MARK}_{prefix}_{secret}"


def authenticate(session: Session, token: str) -> Principal:
    """The principal of a presented key; AuthError when it is not a live key."""
    mark, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if mark != KEY_MARK or not prefix or not secret:
        raise AuthError("malformed API key")
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
        raise AuthError("unknown API key")
    if key.revoked_at is not None:
        raise AuthError("revoked API key")
    return Principal(
        scope=ApiScope(key.scope), key_id=key.id, dataset_id=key.dataset_id, vendor=key.vendor
    )


def revoke_api_key(session: Session, key_id: int) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise LookupError(f"API key {key_id} does not exist")
    key.revoked_at = key.revoked_at or utcnow()
