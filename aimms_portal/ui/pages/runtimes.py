"""Runtimes: upload signed runtime packages (with a progress bar), list and delete them.

The package streams from the browser into :func:`runtimes.upload_runtime`, which
verifies its signature against the SHA-256 computed on the way in; the small ``.sig``
file is read first, by a drop zone of its own, and kept in the state until the upload.
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import runtimes
from aimms_portal.ui.components import confirm_dialog, data_table, size_label
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import call_as_user, failure, when
from aimms_portal.ui.uploads import (
    MAX_SIGNATURE_BYTES,
    UploadProgressState,
    file_picker,
    read_small_file,
    refusal,
    stream_upload,
    upload_outcome,
    upload_progress,
)

PACKAGE_UPLOAD = "runtime-package"
SIGNATURE_UPLOAD = "runtime-sig"


class RuntimesState(UploadProgressState, rx.State):
    """The runtime versions, the chosen signature file and the last upload's outcome."""

    rows: list[dict[str, str]] = []
    #: The chosen ``.sig`` file (public data: a signature, not a secret).
    signature_name: str = ""
    signature_text: str = ""
    signature_error: str = ""
    uploaded: str = ""
    delete_target: str = ""

    @rx.event
    async def load(self) -> Any:
        try:
            usage = await call_as_user(self, runtimes.list_runtimes)
        except PortalError as exc:
            return failure(exc)
        self.rows = [
            {
                "name": u.runtime.name,
                "version": u.runtime.version,
                "python": u.runtime.python_requires,
                "signer": u.runtime.signer_name or "(key removed)",
                "signer_fp": u.runtime.signer_fingerprint[:12],
                "sha256": u.runtime.sha256[:12],
                "size": size_label(u.runtime.size),
                "releases": str(u.releases),
                "uploaded": f"{when(u.runtime.created_at)} by {u.runtime.uploaded_by or '?'}",
            }
            for u in usage
        ]
        return None

    @rx.event(background=True)
    async def receive_signature(self, chunks: rx.UploadChunkIterator) -> None:
        """Keep the chosen ``.sig`` file for the package upload (at most 4 KiB)."""
        text, error = "", ""
        try:
            name, data = await read_small_file(chunks, MAX_SIGNATURE_BYTES)
        except PortalError as exc:
            name, data, error = "", b"", exc.message
        if data is None:
            error = f"{name} is larger than 4 KiB, so it is no .sig file."
        elif not error:
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                error = f"{name} is no .sig file (a .sig file is short JSON text)."
        async with self:
            self.signature_text = text
            self.signature_error = error
            self.signature_name = "" if error else name

    @rx.event(background=True)
    async def upload_package(self, chunks: rx.UploadChunkIterator) -> Any:
        """Stream the chosen package into the portal, verified against the signature."""
        signature = self.signature_text.encode("ascii")
        try:
            runtime = await stream_upload(
                self, chunks, runtimes.upload_runtime, signature=signature
            )
        except PortalError as exc:
            async with self:
                self._finish(False, *refusal(exc))
            return None
        async with self:
            self.uploaded = f"{runtime.name} {runtime.version}"
            self._finish(True, f"Runtime {runtime.name} {runtime.version} uploaded.")
        return [
            rx.clear_selected_files(PACKAGE_UPLOAD),
            rx.clear_selected_files(SIGNATURE_UPLOAD),
            RuntimesState.forget_signature,
            RuntimesState.load,
        ]

    @rx.event
    def forget_signature(self) -> None:
        self.signature_name = ""
        self.signature_text = ""
        self.signature_error = ""

    @rx.event
    def ask_delete(self, name: str, version: str) -> None:
        self.delete_target = f"{name} {version}"

    @rx.event
    def close_delete(self, open_: bool = False) -> None:
        if not open_:
            self.delete_target = ""

    @rx.event
    async def delete(self) -> Any:
        name, _, version = self.delete_target.partition(" ")
        self.delete_target = ""
        try:
            await call_as_user(self, runtimes.delete_runtime, name=name, version=version)
        except PortalError as exc:
            return [failure(exc), RuntimesState.load]
        return [rx.toast.success(f"Runtime {name} {version} deleted."), RuntimesState.load]

    @rx.event
    async def delete_unused(self) -> Any:
        try:
            deleted = await call_as_user(self, runtimes.delete_unused_runtimes)
        except PortalError as exc:
            return failure(exc)
        if not deleted:
            return rx.toast.info("Every runtime version is in use: nothing to delete.")
        return [rx.toast.success(f"Deleted: {', '.join(deleted)}."), RuntimesState.load]


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text.strong(row["name"])),
        rx.table.cell(row["version"]),
        rx.table.cell(rx.code(row["python"])),
        rx.table.cell(
            rx.vstack(
                rx.text(row["signer"], size="2"),
                rx.code(row["signer_fp"] + "…", size="1"),
                spacing="0",
            )
        ),
        rx.table.cell(rx.code(row["sha256"] + "…", size="1")),
        rx.table.cell(row["size"], white_space="nowrap"),
        rx.table.cell(row["releases"]),
        rx.table.cell(rx.text(row["uploaded"], size="1", color_scheme="gray")),
        rx.table.cell(
            rx.button(
                "Delete",
                size="1",
                variant="soft",
                color_scheme="red",
                on_click=RuntimesState.ask_delete(row["name"], row["version"]),
            )
        ),
        id="runtime-row-" + row["name"] + "-" + row["version"],
    )


def _upload_card() -> rx.Component:
    package_chosen = rx.selected_files(PACKAGE_UPLOAD).length() > 0  # type: ignore[attr-defined]
    return rx.card(
        rx.vstack(
            rx.heading("Upload a runtime version", size="4"),
            rx.text(
                "Choose the package (made with 'aimms-portal runtime build') and its .sig "
                "file. Only packages signed by a key the admins trust are accepted.",
                size="2",
                color_scheme="gray",
            ),
            rx.grid(
                file_picker(PACKAGE_UPLOAD, "Package: drop it here or click to choose"),
                file_picker(
                    SIGNATURE_UPLOAD,
                    "Signature (.sig): drop it here or click to choose",
                    chosen=RuntimesState.signature_name,
                    on_drop=RuntimesState.receive_signature(  # type: ignore[misc]
                        rx.upload_files_chunk(upload_id=SIGNATURE_UPLOAD)
                    ),
                ),
                columns="2",
                spacing="3",
                width="100%",
            ),
            rx.cond(
                RuntimesState.signature_error != "",
                rx.text(RuntimesState.signature_error, color_scheme="red", size="2"),
            ),
            rx.hstack(
                rx.button(
                    rx.icon("upload", size=16),
                    "Upload",
                    id="runtime-upload",
                    loading=RuntimesState.uploading,
                    disabled=~package_chosen | (RuntimesState.signature_name == ""),
                    on_click=[
                        RuntimesState.begin_upload,
                        RuntimesState.upload_package(  # type: ignore[misc]
                            rx.upload_files_chunk(
                                upload_id=PACKAGE_UPLOAD,
                                on_upload_progress=RuntimesState.on_progress,
                            )
                        ),
                    ],
                ),
                align="center",
                spacing="3",
            ),
            upload_progress(RuntimesState, "runtime-progress"),
            upload_outcome(RuntimesState, "runtime-upload", rx.text(RuntimesState.message)),
            spacing="3",
            width="100%",
        ),
        margin_bottom="1.5em",
        width="100%",
    )


def runtimes_page() -> rx.Component:
    return shell(
        "Runtimes",
        _upload_card(),
        rx.hstack(
            rx.heading("Runtime versions", size="4"),
            rx.spacer(),
            rx.button(
                rx.icon("trash-2", size=14),
                "Delete unused",
                variant="soft",
                color_scheme="red",
                on_click=RuntimesState.delete_unused,
                id="runtimes-delete-unused",
            ),
            width="100%",
            align="center",
            margin_bottom="0.5em",
        ),
        rx.cond(
            RuntimesState.rows,
            data_table(
                (
                    "Name",
                    "Version",
                    "Python",
                    "Signed by",
                    "SHA-256",
                    "Size",
                    "Releases",
                    "Uploaded",
                    "",
                ),
                RuntimesState.rows,
                _row,
                id="runtimes-table",
                width="100%",
            ),
            rx.text("No runtime versions yet.", color_scheme="gray", id="runtimes-empty"),
        ),
        confirm_dialog(
            open_=RuntimesState.delete_target != "",
            on_open_change=RuntimesState.close_delete,
            title="Delete runtime " + RuntimesState.delete_target + "?",
            description="The package is removed from storage. A runtime that releases use "
            "cannot be deleted.",
            action="Delete",
            on_confirm=RuntimesState.delete,
            element_id="runtime-delete-confirm",
        ),
    )
