"""The portal's own key pair, for bundles encrypted for this portal.

The private key is kept in the database encrypted with a key derived from
``AIMMS_PORTAL_SECRET_KEY``, so every portal process of one installation can decrypt
bundles, and a database dump alone cannot. Changing the secret key therefore makes
existing encrypted bundles undecryptable: keep it stable.
"""

from __future__ import annotations

import base64
import logging

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlmodel import Session, col, select

from aimms_portal.config import get_settings
from aimms_portal.errors import InvalidInput, PortalError
from aimms_portal.models import PortalKey
from aimms_portal.packages import encryption

logger = logging.getLogger(__name__)


def _fernet() -> Fernet:
    secret = get_settings().secret_key.get_secret_value().encode()
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"aimms_portal portal key"
    ).derive(secret)
    return Fernet(base64.urlsafe_b64encode(key))


def ensure_portal_key(session: Session) -> PortalKey:
    """The active portal key, created on first use.

    If two processes create one at the same moment, both rows stay and the oldest is
    the one served; bundles encrypted for either can be decrypted.
    """
    key = session.exec(
        select(PortalKey).where(PortalKey.active == True).order_by(col(PortalKey.id))  # noqa: E712
    ).first()
    if key is not None:
        return key
    private_pem, public_pem = encryption.generate_portal_keypair()
    key = PortalKey(
        fingerprint=encryption.public_fingerprint(public_pem),
        public_pem=public_pem.decode(),
        private_pem_encrypted=_fernet().encrypt(private_pem).decode(),
    )
    session.add(key)
    session.flush()
    logger.info("portal key created: %s", key.fingerprint[:16])
    return key


def private_key_for(session: Session, fingerprint: str) -> bytes:
    """The private PEM of the portal key with ``fingerprint``.

    Raises:
        InvalidInput: no key of this portal has that fingerprint (code ``wrong_portal``).
        PortalError: the key exists but the secret key changed since it was made.
    """
    key = session.exec(select(PortalKey).where(PortalKey.fingerprint == fingerprint)).first()
    if key is None:
        raise InvalidInput(
            f"The bundle is encrypted for another portal (key {fingerprint[:16]}); "
            "encrypt it with this portal's key from /api/v1/portal-key.",
            code="wrong_portal",
        )
    try:
        return _fernet().decrypt(key.private_pem_encrypted.encode())
    except InvalidToken as exc:
        raise PortalError(
            "This portal cannot open its own key: AIMMS_PORTAL_SECRET_KEY changed since the "
            "key was made.",
            code="portal_key_locked",
        ) from exc
