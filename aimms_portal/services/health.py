"""Readiness: can this process serve requests right now?"""

from __future__ import annotations

import logging

from sqlalchemy import text

from aimms_portal.db import session_scope
from aimms_portal.errors import PortalError
from aimms_portal.storage import get_storage

logger = logging.getLogger(__name__)


def readiness_problems() -> dict[str, str]:
    """Check the database and the storage; returns ``{component: reason}`` of failures.

    An empty result means ready. Each check is independent, so a broken database
    does not hide a broken storage.
    """
    problems: dict[str, str] = {}
    try:
        with session_scope() as session:
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except PortalError as exc:
        problems["database"] = exc.message
        logger.warning("not ready: database: %s", exc.log_detail or exc.message)
    except Exception:  # readiness must answer, whatever broke
        problems["database"] = "The database check failed unexpectedly; see the portal's log."
        logger.exception("not ready: database")
    try:
        get_storage().check()
    except PortalError as exc:
        problems["storage"] = exc.message
        logger.warning("not ready: storage: %s", exc.log_detail or exc.message)
    except Exception:  # e.g. boto3 refusing a malformed endpoint URL
        problems["storage"] = "The storage check failed unexpectedly; see the portal's log."
        logger.exception("not ready: storage")
    return problems
