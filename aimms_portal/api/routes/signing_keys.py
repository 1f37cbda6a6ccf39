"""Trusted runtime signing keys (admins only) and the portal's public key (anyone)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.schemas import PortalKeyPublic, SigningKeyCreate, SigningKeyPublic
from aimms_portal.db import session_scope
from aimms_portal.services import portal_keys, signing_keys

router = APIRouter(prefix=f"{API_PREFIX}/signing-keys", tags=["runtimes"])
portal_key_router = APIRouter(prefix=f"{API_PREFIX}/portal-key", tags=["apps"])


@router.get("", response_model=list[SigningKeyPublic])
def list_signing_keys(caller: CallerDep) -> list[SigningKeyPublic]:
    """The keys whose signatures this portal accepts on runtime packages."""
    with session_scope() as session:
        keys = signing_keys.list_signing_keys(session, actor=caller.user)
        return [SigningKeyPublic.model_validate(k) for k in keys]


@router.post("", response_model=SigningKeyPublic, status_code=status.HTTP_201_CREATED)
def add_signing_key(
    body: SigningKeyCreate, caller: CallerDep, request: Request
) -> SigningKeyPublic:
    """Trust a publisher's Ed25519 public key (`ed25519:<base64>`)."""
    with session_scope() as session:
        key = signing_keys.add_signing_key(
            session,
            actor=caller.user,
            name=body.name,
            public_key=body.public_key,
            source_ip=client_ip(request),
        )
        return SigningKeyPublic.model_validate(key)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_signing_key(key_id: int, caller: CallerDep, request: Request) -> None:
    """Stop trusting a key; runtime versions it signed stay."""
    with session_scope() as session:
        signing_keys.delete_signing_key(
            session, actor=caller.user, key_id=key_id, source_ip=client_ip(request)
        )


@portal_key_router.get("", response_model=PortalKeyPublic)
def read_portal_key() -> PortalKeyPublic:
    """The public key to encrypt bundles for this portal (no log-on needed: it is public)."""
    with session_scope() as session:
        key = portal_keys.ensure_portal_key(session)
        return PortalKeyPublic(fingerprint=key.fingerprint, public_pem=key.public_pem)
