"""Browser uploads into blocking services: streamed with back-pressure, never whole."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import reflex as rx

from aimms_portal.errors import InvalidInput
from aimms_portal.ui import uploads
from aimms_portal.ui.uploads import UploadInterrupted, read_small_file, stream_upload
from tests.helpers import run_async

CHUNK = 64 * 1024
QUEUE = 8


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in for a tab's state whose signed-on user is ``pia``."""

    async def actor(_state: Any) -> Any:
        return SimpleNamespace(username="pia")

    monkeypatch.setattr(uploads, "background_actor", actor)
    return SimpleNamespace(router=SimpleNamespace(session=SimpleNamespace(client_ip="127.0.0.1")))


class Browser:
    """Pushes files into an upload iterator as Reflex's multipart parser does."""

    def __init__(self, chunks: rx.UploadChunkIterator) -> None:
        self.chunks = chunks
        self.pushed = 0

    async def send(self, files: list[tuple[str, int]]) -> int:
        for name, size in files:
            for offset in range(0, size, CHUNK):
                data = bytes([offset // CHUNK % 251]) * min(CHUNK, size - offset)
                await self.chunks.push(
                    rx.UploadChunk(filename=name, offset=offset, content_type="", data=data)
                )
                self.pushed += len(data)
        await self.chunks.finish()
        return self.pushed


def test_the_service_pulls_the_upload_chunk_by_chunk(state: Any) -> None:
    size = 200 * CHUNK + 123
    leads: list[int] = []
    browser = Browser(rx.UploadChunkIterator(maxsize=QUEUE))

    def service(*, actor: Any, source: Any, source_ip: str, label: str) -> tuple[int, str]:
        assert threading.current_thread() is not threading.main_thread()
        received = 0
        while data := source.read(CHUNK):
            received += len(data)
            leads.append(browser.pushed - received)
        return received, f"{label} by {actor.username} from {source_ip}"

    async def scenario() -> tuple[int, str]:
        producer = asyncio.create_task(browser.send([("bundle.zip", size)]))
        result = await stream_upload(state, browser.chunks, service, label="bundle")
        assert await producer == size
        return result

    assert run_async(scenario()) == (size, "bundle by pia from 127.0.0.1")
    # the browser is never more than the iterator's few chunks ahead of the service
    assert max(leads) <= (QUEUE + 2) * CHUNK


def test_a_second_file_in_one_upload_is_refused(state: Any) -> None:
    def service(*, actor: Any, source: Any, source_ip: str) -> int:
        return len(source.read())  # a test service may read all of it: it is small

    async def scenario() -> None:
        browser = Browser(rx.UploadChunkIterator(maxsize=QUEUE))
        producer = asyncio.create_task(browser.send([("a.zip", 10), ("b.zip", 10)]))
        with pytest.raises(InvalidInput, match="one file at a time"):
            await stream_upload(state, browser.chunks, service)
        producer.cancel()

    run_async(scenario())


def test_an_interrupted_upload_ends_the_service_thread(state: Any) -> None:
    outcome: list[BaseException] = []
    started = threading.Event()

    def service(*, actor: Any, source: Any, source_ip: str) -> None:
        try:
            started.set()
            while source.read(CHUNK):
                pass
        except BaseException as exc:
            outcome.append(exc)
            raise

    async def scenario() -> None:
        chunks = rx.UploadChunkIterator(maxsize=QUEUE)
        await chunks.push(rx.UploadChunk(filename="a.zip", offset=0, content_type="", data=b"x"))
        # the browser goes away: Reflex cancels the handler, no more chunks come
        handler = asyncio.create_task(stream_upload(state, chunks, service))
        await asyncio.to_thread(started.wait, 5)
        await asyncio.sleep(0.05)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        for _ in range(100):
            if outcome:
                break
            await asyncio.sleep(0.02)
        # were the thread still waiting, this would free it (and the test would fail)
        await chunks.finish()

    run_async(scenario())
    assert len(outcome) == 1 and isinstance(outcome[0], UploadInterrupted)


def test_a_signature_file_is_read_only_up_to_its_limit() -> None:
    async def scenario(size: int) -> tuple[str, bytes | None]:
        browser = Browser(rx.UploadChunkIterator(maxsize=QUEUE))
        producer = asyncio.create_task(browser.send([("p.zip.sig", size)]))
        result = await read_small_file(browser.chunks, 4096)
        producer.cancel()
        return result

    name, data = run_async(scenario(300))
    assert name == "p.zip.sig" and data is not None and len(data) == 300
    assert run_async(scenario(10 * CHUNK)) == ("p.zip.sig", None)
