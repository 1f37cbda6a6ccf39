"""The proxy's HTTP/1.1 client against small scripted servers on loopback: keep-alive
and when a connection is not reused, bodies of every kind both ways, back-pressure,
interim answers, broken and malformed answers, the per-address limit and idle expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from aimms_portal.api import upstream
from aimms_portal.api.upstream import Upstream, UpstreamError
from tests.helpers import run_async

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Served:
    """What a scripted server saw: its address, and one entry per connection."""

    def __init__(self) -> None:
        self.address = ""
        self.connections = 0
        self.requests: list[bytes] = []  # heads (and bodies) as they arrived


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Served]:
    served = Served()
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    served.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield served
    finally:
        server.close()
        for writer in writers:
            writer.close()


async def read_request(reader: asyncio.StreamReader, served: Served) -> tuple[bytes, bytes]:
    """One request's head and body (by its Content-Length, or de-chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    served.requests.append(head + body)
    return head, body


def answer(body: bytes, status: str = "200 OK", *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: app\r\n\r\n".encode()


async def body_of(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


Runner = Callable[[Awaitable[None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a test's coroutine on the standard event loop, and on uvloop's (which Granian
    picks up in the portal): their transports differ in details."""
    if request.param == "asyncio":
        return lambda coroutine: run_async(coroutine)  # type: ignore[arg-type]
    uvloop = pytest.importorskip("uvloop")
    return lambda coroutine: run_async(coroutine, uvloop.run)  # type: ignore[arg-type]


def test_a_connection_is_kept_for_the_next_request(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader, served)
            writer.write(answer(b"pong:" + head.split(b" ")[1]))

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            for path in ("/a", "/b", "/c"):
                got = await client.request(served.address, get(path))
                assert (got.status, await got.read()) == (200, b"pong:" + path.encode())
                assert got.content_length == len(b"pong:") + 2
                got.release()
            assert served.connections == 1
            client.close()

    served = Served()
    run(main())


def test_bodies_of_unknown_length_stream_and_end_the_connection_when_it_closes(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader, served)
        if b"/chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"one,", b"two,", b"three"):
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            head, _ = await read_request(reader, served)  # and it stays open
            writer.write(answer(b"after"))
        else:  # an answer without a length: it ends when the server closes
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            await writer.drain()

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            chunked = await client.request(served.address, get("/chunked"))
            assert chunked.content_length is None
            assert b"".join([c async for c in chunked.chunks()]) == b"one,two,three"
            chunked.release()
            again = await client.request(served.address, get("/again"))
            assert await again.read() == b"after"
            again.release()
            assert served.connections == 1

            closing = await client.request(served.address, get("/closing"))
            assert await closing.read() == b"until the end"
            closing.release()
            assert served.connections == 2
            client.close()

    served = Served()
    run(main())


def test_answers_without_a_body_complete_at_their_head(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader, served)
            if head.startswith(b"HEAD"):  # announces a length, sends no body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/empty" in head:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif b"/same" in head:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
            else:
                writer.write(answer(b"body"))

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            head = b"HEAD / HTTP/1.1\r\nhost: app\r\n\r\n"
            got = await client.request(served.address, head, head_only=True)
            assert got.complete and got.status == 200 and await got.read() == b""
            assert (b"content-length", b"1000") in got.headers
            got.release()
            for path, status in (("/empty", 204), ("/same", 304), ("/", 200)):
                got = await client.request(served.address, get(path))
                assert got.status == status
                assert await got.read() == (b"body" if status == 200 else b"")
                got.release()
            assert served.connections == 1
            client.close()

    served = Served()
    run(main())


def test_an_interim_answer_is_skipped(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, served)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final", "201 Created"))

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            got = await client.request(served.address, get())
            assert (got.status, await got.read()) == (201, b"final")
            got.release()
            client.close()

    served = Served()
    run(main())


def test_request_bodies_go_with_their_length_or_in_chunks(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader, served)
            writer.write(answer(b"got %d" % len(body)))

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            parts = [b"x" * 70_000, b"", b"y" * 5]
            head = b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 70005\r\n\r\n"
            got = await client.request(served.address, head, body_of(parts))
            assert await got.read() == b"got 70005"
            got.release()
            head = b"POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
            got = await client.request(served.address, head, body_of(parts), chunked=True)
            assert await got.read() == b"got 70005"
            got.release()
            assert served.requests[1].endswith(b"x" * 70_000 + b"y" * 5)
            assert served.connections == 1
            client.close()

    served = Served()
    run(main())


def test_an_app_that_answers_before_reading_the_body_gets_its_answer_through(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"too large", "413 Content Too Large", "Connection: close"))
        await writer.drain()
        await asyncio.sleep(60)  # and reads nothing more

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * 65536

    async def main() -> None:
        async with serving(handler) as served:
            client = Upstream()
            head = b"POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
            got = await client.request(served.address, head, endless(), chunked=True)
            assert (got.status, await got.read()) == (413, b"too large")
            got.release()
            client.close()

    run(main())


def test_a_large_answer_is_read_no_faster_than_it_is_taken(
    monkeypatch: pytest.MonkeyPatch, run: Runner
) -> None:
    monkeypatch.setattr(upstream, "READ_AHEAD", 64 * 1024)
    size = 16 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, served)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"b" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            got = await client.request(served.address, get())
            chunks = got.chunks()
            total = len(await anext(chunks))
            await asyncio.sleep(0.3)  # the server would send it all meanwhile
            # held: the read-ahead plus what one read brought in
            assert got._buffered <= upstream.READ_AHEAD + 256 * 1024
            async for chunk in chunks:
                total += len(chunk)
            assert total == size
            got.release()
            client.close()

    served = Served()
    run(main())


def test_a_kept_connection_the_app_closed_is_not_used_again(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, served)
        writer.write(answer(b"once"))  # keep-alive announced, but closed right after
        await writer.drain()

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            for _ in range(3):
                got = await client.request(served.address, get())
                assert await got.read() == b"once"
                got.release()
            assert served.connections == 3
            client.close()

    served = Served()
    run(main())


def test_a_get_on_a_kept_connection_that_breaks_is_tried_once_more(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, served)
        writer.write(answer(b"first"))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request: dropped unanswered
        writer.transport.abort()

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            got = await client.request(served.address, get())
            assert await got.read() == b"first"
            got.release()
            again = await client.request(served.address, get())
            assert await again.read() == b"first"  # from a new connection
            again.release()
            assert served.connections == 2
            client.close()

    served = Served()
    run(main())


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # closed inside the head
        b"NOT HTTP AT ALL\r\n\r\n",  # malformed
    ],
)
def test_broken_answers_raise(reply: bytes, run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, Served())
        writer.write(reply)
        await writer.drain()

    async def main() -> None:
        async with serving(handler) as served:
            client = Upstream()
            with pytest.raises(UpstreamError):
                got = await client.request(served.address, get())
                try:
                    await got.read()
                finally:
                    got.release()
            client.close()

    run(main())


def test_an_app_that_is_not_there_raises(run: Runner) -> None:
    async def main() -> None:
        async with serving(lambda r, w: asyncio.sleep(0)) as served:
            address = served.address
        client = Upstream()
        with pytest.raises(UpstreamError, match="no connection"):
            await client.request(address, get())
        with pytest.raises(UpstreamError, match="not an address"):
            await client.request("nowhere", get())
        client.close()

    run(main())


def test_requests_wait_for_a_connection_beyond_the_limit(
    monkeypatch: pytest.MonkeyPatch, run: Runner
) -> None:
    monkeypatch.setattr(upstream, "PER_ADDRESS", 1)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader, served)
            writer.write(answer(head.split(b" ")[1]))

    async def main() -> None:
        nonlocal served
        async with serving(handler) as served:
            client = Upstream()
            first = await client.request(served.address, get("/1"))
            second = asyncio.ensure_future(client.request(served.address, get("/2")))
            await asyncio.sleep(0.1)
            assert not second.done()  # waits while the only connection is in use
            assert await first.read() == b"/1"
            first.release()
            got = await second
            assert await got.read() == b"/2"
            got.release()
            assert served.connections == 1
            client.close()

    served = Served()
    run(main())


def test_idle_connections_are_closed_after_a_while(
    monkeypatch: pytest.MonkeyPatch, run: Runner
) -> None:
    monkeypatch.setattr(upstream, "KEEPALIVE", 0.2)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, served)
        writer.write(answer(b"ok"))
        await reader.read()  # until the client closes
        ended.set()

    async def main() -> None:
        nonlocal served, ended
        ended = asyncio.Event()
        async with serving(handler) as served:
            client = Upstream()
            got = await client.request(served.address, get())
            assert await got.read() == b"ok"
            got.release()
            await asyncio.wait_for(ended.wait(), 10)
            assert client._pools == {} or not any(p.idle for p in client._pools.values())
            client.close()

    served = Served()
    ended: asyncio.Event
    run(main())
