"""A portal without its UI, as a process of its own: the REST API and the scheduler.

The crash tests start it with ``python -m tests.scheduler.portal_process``, kill it with
SIGKILL (a crash, not a shutdown) and start it again; it takes every setting from the
environment, as ``aimms-portal run`` does.
"""

from __future__ import annotations

import logging

import uvicorn

from aimms_portal.api.app import create_api
from aimms_portal.config import get_settings
from aimms_portal.launchers import get_launcher
from aimms_portal.scheduler.service import Scheduler


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = get_settings()
    scheduler = Scheduler(get_launcher(), settings)
    scheduler.start()
    try:
        uvicorn.run(
            create_api(), host="127.0.0.1", port=settings.port, log_level="warning", lifespan="off"
        )
    finally:
        scheduler.stop()


if __name__ == "__main__":
    main()
