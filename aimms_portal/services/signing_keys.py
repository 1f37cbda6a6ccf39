"""Trusted runtime signing keys (admins only)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from aimms_portal.auth.access import Action, require
from aimms_portal.errors import Conflict, InvalidInput, NotFound
from aimms_portal.models import SigningKey, User
from aimms_portal.packages import signing
from aimms_portal.services import audit


def list_signing_keys(session: Session, *, actor: User) -> list[SigningKey]:
    """All trusted keys by name."""
    require(actor, Action.manage_signing_keys)
    return list(session.exec(select(SigningKey).order_by(col(SigningKey.name))).all())


def add_signing_key(
    session: Session, *, actor: User, name: str, public_key: str, source_ip: str = ""
) -> SigningKey:
    """Trust a publisher's Ed25519 key, given as ``ed25519:<base64>``.

    Raises:
        InvalidInput: the text is no Ed25519 public key, or the name is empty or too long.
        Conflict: the name or the key is trusted already.
    """
    require(actor, Action.manage_signing_keys)
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise InvalidInput("A key name has 1 to 64 characters.", code="invalid_name")
    public_key = public_key.strip()
    signing.parse_public_key(public_key)
    fingerprint = signing.fingerprint(public_key)
    if session.exec(select(SigningKey.id).where(SigningKey.name == name)).first() is not None:
        raise Conflict(f"A key named {name!r} is trusted already.", code="name_taken")
    existing = session.exec(select(SigningKey).where(SigningKey.fingerprint == fingerprint)).first()
    if existing is not None:
        raise Conflict(f"This key is trusted already, as {existing.name!r}.", code="key_trusted")
    key = SigningKey(
        name=name, public_key=public_key, fingerprint=fingerprint, created_by=actor.username
    )
    session.add(key)
    session.flush()
    audit.record(
        session,
        action="signing_key.add",
        actor=actor,
        target=key,
        source_ip=source_ip,
        target_type="signing_key",
        detail=f"fingerprint={fingerprint[:16]}",
    )
    return key


def delete_signing_key(session: Session, *, actor: User, key_id: int, source_ip: str = "") -> None:
    """Stop trusting a key. Runtime versions it signed stay (they were verified)."""
    require(actor, Action.manage_signing_keys)
    key = session.get(SigningKey, key_id) if 1 <= key_id <= 2**31 - 1 else None
    if key is None:
        raise NotFound(f"No signing key with id {key_id}.")
    audit.record(
        session,
        action="signing_key.delete",
        actor=actor,
        target=key,
        source_ip=source_ip,
        target_type="signing_key",
        detail=f"fingerprint={key.fingerprint[:16]}",
    )
    session.delete(key)


def trusted_key(session: Session, fingerprint: str) -> SigningKey | None:
    """The trusted key with this fingerprint, if any."""
    return session.exec(select(SigningKey).where(SigningKey.fingerprint == fingerprint)).first()
