"""Publish a release: upload an app bundle with a progress bar.

The bundle streams from the browser into :func:`apps.publish_bundle`, which validates
all of it before it records anything; a refusal lists every problem it found.
"""

from __future__ import annotations

import json
from typing import Any

import reflex as rx

from aimms_portal.errors import PortalError
from aimms_portal.services import apps
from aimms_portal.ui.layout import shell
from aimms_portal.ui.uploads import (
    UploadProgressState,
    file_picker,
    refusal,
    stream_upload,
    upload_outcome,
    upload_progress,
)

BUNDLE_UPLOAD = "publish-bundle"


class PublishState(UploadProgressState, rx.State):
    """The publish form's option and the last upload's outcome."""

    hide_previous: bool = False
    published_app: str = ""
    published_version: str = ""

    @rx.event
    def set_hide_previous(self, value: bool) -> None:
        self.hide_previous = bool(value)

    @rx.event(background=True)
    async def publish(self, chunks: rx.UploadChunkIterator) -> Any:
        """Stream the chosen bundle into the portal and publish it as a release."""
        try:
            release = await stream_upload(
                self, chunks, apps.publish_bundle, hide_previous=self.hide_previous
            )
        except PortalError as exc:
            async with self:
                self.published_app = self.published_version = ""
                self._finish(False, *refusal(exc))
            return None
        name = str(json.loads(release.manifest).get("name", ""))
        async with self:
            self.published_app, self.published_version = name, release.version
            self._finish(True, f"Published {name} {release.version}.")
        return rx.clear_selected_files(BUNDLE_UPLOAD)


def _success() -> rx.Component:
    return rx.hstack(
        rx.text(PublishState.message),
        rx.link(
            "Open the app page",
            href="/apps/" + PublishState.published_app,
            id="publish-app-link",
        ),
        spacing="2",
        wrap="wrap",
    )


def publish_page() -> rx.Component:
    chosen = rx.selected_files(BUNDLE_UPLOAD).length() > 0  # type: ignore[attr-defined]
    return shell(
        "Publish a release",
        rx.card(
            rx.vstack(
                rx.text(
                    "Upload an app bundle (made with 'aimms-portal app pack'). The whole "
                    "bundle and its app.json are checked before anything is recorded; the "
                    "runtime it needs must be on the portal already. A new app is yours to "
                    "manage; a new release of an existing app needs the write right on it.",
                    size="2",
                    color_scheme="gray",
                ),
                file_picker(BUNDLE_UPLOAD, "Bundle: drop it here or click to choose"),
                rx.checkbox(
                    "Hide the previous release",
                    checked=PublishState.hide_previous,
                    on_change=PublishState.set_hide_previous,
                    id="publish-hide-previous",
                ),
                rx.button(
                    rx.icon("upload", size=16),
                    "Publish",
                    id="publish-submit",
                    loading=PublishState.uploading,
                    disabled=~chosen,
                    on_click=[
                        PublishState.begin_upload,
                        PublishState.publish(  # type: ignore[misc]
                            rx.upload_files_chunk(
                                upload_id=BUNDLE_UPLOAD,
                                on_upload_progress=PublishState.on_progress,
                            )
                        ),
                    ],
                ),
                upload_progress(PublishState, "publish-progress"),
                upload_outcome(PublishState, "publish", _success()),
                spacing="3",
                width="100%",
            ),
            max_width="44em",
        ),
    )
