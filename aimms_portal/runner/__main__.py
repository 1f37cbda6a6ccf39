"""``python -m aimms_portal.runner``: what a launcher starts in every session."""

import sys

from aimms_portal.runner.agent import main

sys.exit(main())
