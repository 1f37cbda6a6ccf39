"""Reflex configuration of the portal.

The portal's own settings (``AIMMS_PORTAL_*``) decide the public address; Reflex's
options can still be overridden with ``REFLEX_*`` variables.
"""

from urllib.parse import urlparse

import reflex as rx

from aimms_portal.config import get_settings

_settings = get_settings()
_public = urlparse(_settings.public_url)

config = rx.Config(
    app_name="aimms_portal",
    # only loopback unless an operator says otherwise (REFLEX_BACKEND_HOST)
    backend_host="127.0.0.1",
    frontend_port=_settings.port,
    backend_port=_settings.port,
    api_url=_settings.public_url.rstrip("/"),
    deploy_url=_settings.public_url.rstrip("/"),
    cors_allowed_origins=(f"{_public.scheme}://{_public.netloc}",),
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(accent_color="indigo", radius="medium"))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
