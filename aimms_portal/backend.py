"""The portal's backend without its UI: the REST API and the scheduler in one process.

DESIGN.md's cluster splits the portal into a UI front and a backend; this is the
backend: ``python -m aimms_portal.backend`` serves ``/api/v1`` (runners, the CLI and the
SDK talk to it) on ``AIMMS_PORTAL_PORT`` and takes part in the scheduler's leader
election like every portal process. Every setting comes from the environment, as for
``aimms-portal run``. The benchmarks and the crash tests use it too: it starts in well
under a second, with no front end to build.
"""

from __future__ import annotations

import uvicorn

from aimms_portal.api import proxy
from aimms_portal.api.app import create_api
from aimms_portal.config import get_settings
from aimms_portal.launchers import get_launcher
from aimms_portal.logs import configure_logging
from aimms_portal.scheduler.service import Scheduler


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    scheduler = Scheduler(get_launcher(), settings)
    scheduler.start()
    try:
        uvicorn.run(
            proxy.SessionProxy(create_api()),  # the proxy ahead of FastAPI's own layers
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            lifespan="on",
            # warm sessions' long polls would hold a stop up for up to 20 s; their
            # runners ask again (of another portal process, or of this one restarted)
            timeout_graceful_shutdown=5,
        )
    finally:
        scheduler.stop()


if __name__ == "__main__":
    main()
