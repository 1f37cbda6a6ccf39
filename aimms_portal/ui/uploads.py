"""Browser uploads streamed into a service, and the progress bar that goes with them.

A page's upload button calls a background handler through ``rx.upload_files_chunk``.
Reflex parses the multipart body as it arrives and hands the handler an
:class:`rx.UploadChunkIterator` that holds at most a few chunks; :func:`stream_upload`
lets the blocking service pull those chunks one at a time from a worker thread
(:class:`~aimms_portal.aio.AsyncChunkReader`), so the upload flows straight into
storage at the speed the storage takes it. Nothing is written to Reflex's public
``/_upload`` folder, and no upload is ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import reflex as rx

from aimms_portal.aio import AsyncChunkReader, run_blocking
from aimms_portal.errors import InvalidInput, PortalError
from aimms_portal.ui.state import background_actor

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest ``.sig`` file (docs/formats.md: at most 4 KiB).
MAX_SIGNATURE_BYTES = 4096


class UploadInterrupted(ConnectionError):
    """The browser went away before its upload was complete."""


async def _one_file(chunks: rx.UploadChunkIterator) -> AsyncIterator[bytes]:
    first: str | None = None
    async for chunk in chunks:
        if first is None:
            first = chunk.filename
        elif chunk.filename != first:
            raise InvalidInput("Upload one file at a time.", code="too_many_files")
        if chunk.data:
            yield chunk.data


async def stream_upload(
    state: rx.State, chunks: rx.UploadChunkIterator, fn: Callable[..., T], **kwargs: Any
) -> T:
    """Call the blocking service ``fn(actor=..., source=..., source_ip=..., **kwargs)``
    with the one uploaded file as its source, in a worker thread.

    The signed-on user is looked up from the tab's log-on cookie now; the service checks
    their rights before it reads a byte. If the browser goes away mid-upload, the
    service's source fails, so it removes what it received and its thread ends.

    Raises:
        PortalError: whatever the service refuses, or a second file in the upload.
    """
    actor = await background_actor(state)
    reader = AsyncChunkReader(_one_file(chunks), asyncio.get_running_loop())
    try:
        return await run_blocking(
            fn,
            actor=actor,
            source=reader,
            source_ip=state.router.session.client_ip or "",
            **kwargs,
        )
    except asyncio.CancelledError:
        # the upload request ended early: wake the worker thread waiting for a chunk,
        # so the service cleans up and the thread ends
        logger.info("upload to %s by %s was interrupted", fn.__name__, actor.username)
        await chunks.fail(UploadInterrupted("The upload was interrupted."))
        raise


async def read_small_file(chunks: rx.UploadChunkIterator, limit: int) -> tuple[str, bytes | None]:
    """The name of the one uploaded file, and its bytes if it has at most ``limit``.

    Reads no more than ``limit + 1`` bytes into memory; a larger file gives ``None``.

    Raises:
        InvalidInput: more than one file came.
    """
    name = ""
    data = bytearray()
    async for chunk in chunks:
        if name and chunk.filename != name:
            raise InvalidInput("Choose one file.", code="too_many_files")
        name = chunk.filename
        data += chunk.data[: limit + 1 - len(data)]
        if len(data) > limit:
            return name, None
    return name, bytes(data)


class UploadProgressState(rx.State, mixin=True):
    """Progress of one upload at a time, for a page's state to mix in.

    The browser reports the bytes it has sent (``on_upload_progress``); once all are
    sent the server is still checking them until the handler calls :meth:`_finish`.
    """

    percent: int = 0
    phase: str = ""  # "" | "uploading" | "done" | "failed"
    message: str = ""
    problems: list[str] = []

    @rx.var
    def uploading(self) -> bool:
        return self.phase == "uploading"

    @rx.var
    def progress_label(self) -> str:
        if self.phase == "uploading":
            return (
                f"Uploading… {self.percent}%"
                if self.percent < 100
                else "Uploaded 100%, checking it on the server…"
            )
        if self.phase in ("done", "failed"):
            return f"{self.percent}% sent"
        return ""

    @rx.event
    def begin_upload(self) -> None:
        self.percent = 0
        self.phase = "uploading"
        self.message = ""
        self.problems = []

    @rx.event
    def on_progress(self, progress: dict[str, Any]) -> None:
        try:
            fraction = float(progress.get("progress") or 0)
        except (TypeError, ValueError):
            return
        self.percent = max(self.percent, min(100, int(fraction * 100)))

    def _finish(self, ok: bool, message: str, problems: list[str] | None = None) -> None:
        self.phase = "done" if ok else "failed"
        self.message = message
        self.problems = problems or []


def refusal(exc: PortalError) -> tuple[str, list[str]]:
    """What to show for a refused upload: the message, and the problems one per line.

    A manifest error (``app.json: a; b``) lists every problem it found; the page shows
    them as a list under ``app.json has these problems:``.
    """
    problems = getattr(exc, "problems", None)
    if not isinstance(problems, list) or not problems:
        return exc.message, []
    return f"{exc.message.split(': ', 1)[0]} has these problems:", [str(p) for p in problems]


def file_picker(upload_id: str, prompt: str, chosen: Any = None, **props: Any) -> rx.Component:
    """A drop zone for one file that shows the chosen file's name.

    ``chosen`` is the name to show (a string var); by default the file the drop zone
    holds for a later upload.
    """
    if chosen is None:
        chosen = rx.selected_files(upload_id).join(", ")  # type: ignore[attr-defined]
    return rx.upload.root(
        rx.hstack(
            rx.icon("file-up", size=18, color="var(--accent-11)", flex_shrink="0"),
            rx.cond(
                chosen != "",
                rx.text(chosen, weight="medium", size="2", class_name="chosen-file"),
                rx.text(prompt, size="2", color_scheme="gray"),
            ),
            align="center",
            spacing="2",
        ),
        id=upload_id,
        multiple=False,
        max_files=1,
        width="100%",
        border="1px dashed var(--gray-a8)",
        border_radius="var(--radius-3)",
        padding="0.9em 1.2em",
        cursor="pointer",
        _hover={"background": "var(--gray-a2)"},
        **props,
    )


def upload_progress(state: Any, element_id: str) -> rx.Component:
    """The progress bar and its label, while and after an upload."""
    return rx.cond(
        state.phase != "",
        rx.vstack(
            rx.progress(value=state.percent, max=100, width="100%", id=element_id),
            rx.text(state.progress_label, size="1", color_scheme="gray", id=f"{element_id}-label"),
            width="100%",
            spacing="1",
        ),
    )


def upload_outcome(state: Any, element_id: str, success: rx.Component) -> rx.Component:
    """The result of the last upload: ``success`` or the refusal in plain words."""
    return rx.cond(
        state.phase == "done",
        rx.callout.root(
            rx.callout.icon(rx.icon("circle-check")),
            success,
            color_scheme="green",
            id=f"{element_id}-done",
            width="100%",
        ),
        rx.cond(
            state.phase == "failed",
            rx.callout.root(
                rx.callout.icon(rx.icon("triangle-alert")),
                rx.vstack(
                    rx.text(state.message),
                    rx.cond(
                        state.problems,
                        rx.unordered_list(
                            rx.foreach(state.problems, lambda p: rx.list_item(p)),
                            margin_left="1em",
                        ),
                    ),
                    spacing="1",
                ),
                color_scheme="red",
                id=f"{element_id}-error",
                width="100%",
            ),
        ),
    )
