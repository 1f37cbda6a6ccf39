"""The proxy's HTTP/1.1 client: pooled keep-alive connections to the apps of sessions.

Why not a general client: the proxy forwards every request of every page of every app,
and a general client spends most of its time on what the proxy does not need (URL
objects, cookie jars, redirects, decompression, header multidicts): with aiohttp's
client, half of the proxy's CPU time per request went there (measured with py-spy
under ``bench/webui_latency.py``). This one writes the request head the proxy built in
one piece, parses the answer with ``httptools`` (the C parser uvicorn uses), and keeps
the connection for the next request.

Contract:

- :meth:`Upstream.request` sends one request to ``host:port`` and returns the
  :class:`Answer` once the app's status line and headers have arrived. A request body
  streams in as it is given (with its ``Content-Length``, or chunked), with
  back-pressure; an answer's body streams out the same way (:meth:`Answer.chunks`), or
  whole (:meth:`Answer.read`) for small answers.
- The caller must :meth:`Answer.release` every answer it got (also on errors): the
  connection then goes back to the pool if the answer was read to its end, the request
  was sent whole and both sides keep the connection alive; otherwise it is closed.
- :class:`UpstreamError` (an ``OSError``) for anything that goes wrong on the way: no
  connection within :data:`CONNECT_TIMEOUT` seconds, refused, reset, malformed or cut
  short. A pooled connection that turns out to be closed by the app is retried once on
  a new one, for requests without a body.
- At most :data:`PER_ADDRESS` connections per address; more requests wait for one.
  Idle connections are closed after :data:`KEEPALIVE` seconds (a threaded app keeps a
  thread per open connection).
- An instance belongs to one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from typing import cast

import httptools

logger = logging.getLogger(__name__)

#: Seconds to wait for a new connection to an app.
CONNECT_TIMEOUT = 5.0
#: Seconds an unused connection is kept open.
KEEPALIVE = 30.0
#: Connections to one app (address) at most, in use or idle.
PER_ADDRESS = 100
#: Bytes of an answer's body read ahead of the consumer before reading pauses.
READ_AHEAD = 256 * 1024


class UpstreamError(OSError):
    """The app could not be reached, or its answer was malformed or cut short."""


class _Connection(asyncio.Protocol):
    """One TCP connection to an app; carries one :class:`Answer` at a time."""

    def __init__(self, pool: _AddressPool) -> None:
        self.pool = pool
        self.loop = pool.upstream.loop
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.closed = False
        self.counted = False  # in the pool's count (a connection given out once)
        self.idle_since = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave alike
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None:
            self.close()  # the app spoke out of turn: the connection cannot be trusted
            return
        answer._feed(data)

    def eof_received(self) -> bool:
        if self.answer is not None:
            self.answer._eof()
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.answer is not None:
            self.answer._eof()
        self._wake_writer(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer(None)

    # -- for the answer and the pool --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError("the connection to the app was closed")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the app reads more slowly than the request body comes in."""
        if self.closed:
            raise UpstreamError("the connection to the app was closed")
        if not self._write_paused:
            return
        self._drained = self.loop.create_future()
        await self._drained

    def close(self) -> None:
        """Close the connection; the pool forgets it in :meth:`connection_lost`."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _wake_writer(self, exc: Exception | None) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if self.closed:
                waiter.set_exception(UpstreamError(f"the app closed the connection ({exc})"))
            else:
                waiter.set_result(None)


class Answer:
    """The app's answer to one request: status and headers at once, the body as it comes.

    ``headers`` are the raw ``(name, value)`` pairs in their order, names lower-cased.
    ``content_length`` is ``None`` for a body of unknown length (chunked, or until the
    app closes the connection).
    """

    def __init__(self, connection: _Connection, *, head_only: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self._connection = connection
        self._head_only = head_only  # an answer to HEAD: no body whatever it announces
        self._parser = httptools.HttpResponseParser(self)
        self._until_close = False
        self._head: asyncio.Future[None] = connection.loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._more: asyncio.Future[None] | None = None
        self._complete = False
        self._error: UpstreamError | None = None
        self._read_paused = False
        self._sent = False  # the whole request went out
        self._released = False
        self._spoiled = False
        self._keep_alive = False
        self.got_bytes = False

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim answer (100 Continue): wait for the real one
            return
        self.status = status
        # asked now: once the message is complete, the parser already looks at the next
        self._keep_alive = self._parser.should_keep_alive()
        chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
        if self._head_only or status in (204, 304):
            self.content_length = 0
            self._complete = True
        elif chunked:
            self.content_length = None
        elif self.content_length is None:
            self._until_close = True  # no length given: the body ends when the app closes
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._spoiled = True  # a body after an answer to HEAD: the connection is not reused
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_AHEAD and not self._read_paused:
            transport = self._connection.transport
            if transport is not None:
                transport.pause_reading()
                self._read_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self._complete = True
        self._wake()

    # -- from the connection ----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self.got_bytes = True
        if self._complete and self._head_only:
            self._connection.close()  # bytes after the head of an answer to HEAD
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, ValueError) as exc:
            self._fail(UpstreamError(f"the app's answer is malformed: {exc}"))
            self._connection.close()

    def _eof(self) -> None:
        if self._complete:
            return
        if self._until_close and self._head.done():
            self._complete = True
            self._wake()
            return
        self._fail(UpstreamError("the app closed the connection before it answered whole"))

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter, self._more = self._more, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the caller ---------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """The whole body has arrived."""
        return self._complete

    def take(self) -> bytes:
        """The whole body of a :attr:`complete` answer."""
        assert self._complete, "the body has not arrived yet"
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        while not self._complete and self._error is None:
            self._resume_reading()  # the caller takes it all: no reason to hold back
            self._more = self._connection.loop.create_future()
            await self._more
        if self._error is not None:
            raise self._error
        return self.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises :class:`UpstreamError` if it is cut short."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._read_paused and self._buffered <= READ_AHEAD // 2:
                    self._resume_reading()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                return
            self._more = self._connection.loop.create_future()
            await self._more

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            transport = self._connection.transport
            if transport is not None and not self._connection.closed:
                transport.resume_reading()

    def release(self) -> None:
        """Give the connection back (reusable) or close it; safe to call twice."""
        if self._released:
            return
        self._released = True
        if not self._head.done():
            self._head.cancel()
        elif not self._head.cancelled():
            self._head.exception()  # retrieved: no "never retrieved" warning
        connection = self._connection
        connection.answer = None
        reusable = (
            self._complete
            and self._sent
            and self._error is None
            and not self._until_close
            and not self._chunks
            and not self._spoiled
            and self._keep_alive
        )
        if reusable and not connection.closed:
            connection.pool.give_back(connection)
        else:
            connection.close()


class _AddressPool:
    """The connections to one app."""

    def __init__(self, upstream: Upstream, host: str, port: int) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self.idle: list[_Connection] = []  # the most recently used last
        self.count = 0  # open or opening
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection and whether it was used before."""
        while True:
            while self.idle:
                connection = self.idle.pop()
                if not connection.closed:
                    return connection, True
            if self.count < PER_ADDRESS:
                break
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.count += 1
        try:
            connection = await self._connect()
        except BaseException:
            self.count -= 1
            self._wake_one()
            raise
        connection.counted = True
        return connection, False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
        except TimeoutError as exc:
            raise UpstreamError(f"no connection to the app within {CONNECT_TIMEOUT:g} s") from exc
        except OSError as exc:
            raise UpstreamError(f"no connection to the app: {exc}") from exc
        return protocol

    def give_back(self, connection: _Connection) -> None:
        if self.upstream.closed:
            connection.close()
            return
        connection.idle_since = self.upstream.loop.time()
        self.idle.append(connection)
        self.upstream.schedule_sweep()
        self._wake_one()

    def lost(self, connection: _Connection) -> None:
        """``connection`` is closed (called once per connection, by asyncio)."""
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.counted:  # else its connect failed, and acquire() uncounted it
            connection.counted = False
            self.count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def sweep(self, now: float) -> None:
        """Close the connections idle for longer than :data:`KEEPALIVE`."""
        for connection in [c for c in self.idle if now - c.idle_since >= KEEPALIVE]:
            connection.close()

    @property
    def unused(self) -> bool:
        return self.count == 0 and not self.waiters


class Upstream:
    """Pooled keep-alive connections to apps, for one event loop (see the module)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._pools: dict[str, _AddressPool] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    def _pool(self, address: str) -> _AddressPool:
        pool = self._pools.get(address)
        if pool is None:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise UpstreamError(f"not an address: {address!r}")
            pool = self._pools[address] = _AddressPool(self, host.strip("[]"), int(port))
        return pool

    async def request(
        self,
        address: str,
        head: bytes,
        body: AsyncIterator[bytes] | None = None,
        *,
        chunked: bool = False,
        head_only: bool = False,
    ) -> Answer:
        """Send ``head`` (request line and headers, ending in an empty line) and ``body``.

        Args:
            address: ``host:port`` of the app.
            head: the request's head as it goes on the wire, ``Host`` included; it must
                announce the body (``Content-Length``, or ``Transfer-Encoding: chunked``
                with ``chunked`` set) if there is one.
            body: the request's body; ``None`` for none.
            chunked: send ``body`` in chunked encoding.
            head_only: the request is ``HEAD`` (its answer has no body).

        Raises:
            UpstreamError: see the module's contract.
        """
        if self.closed:
            raise UpstreamError("the proxy is shutting down")
        pool = self._pool(address)
        for attempt in (1, 2):
            if pool.idle and not pool.idle[-1].closed:
                connection, reused = pool.idle.pop(), True  # the usual case, without a wait
            else:
                connection, reused = await pool.acquire()
            answer = Answer(connection, head_only=head_only)
            connection.answer = answer
            try:
                if body is None:
                    connection.write(head)
                    answer._sent = True
                    await answer._head
                else:
                    return await self._with_body(connection, answer, head, body, chunked)
                return answer
            except UpstreamError:
                answer.release()
                # a kept connection the app had closed just now: once more on a new one
                if attempt == 1 and reused and body is None and not answer.got_bytes:
                    continue
                raise
            except BaseException:
                answer.release()
                raise
        raise AssertionError("unreachable")

    async def _with_body(
        self,
        connection: _Connection,
        answer: Answer,
        head: bytes,
        body: AsyncIterator[bytes],
        chunked: bool,
    ) -> Answer:
        """Send the body while waiting for the answer (an app may answer before it read
        the whole body, e.g. to refuse it)."""

        async def send() -> None:
            connection.write(head)
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    connection.write(chunk)
                await connection.drain()
            if chunked:
                connection.write(b"0\r\n\r\n")
            answer._sent = True

        sender = asyncio.ensure_future(send())
        try:
            await asyncio.wait([sender, answer._head], return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and sender.exception() is not None and not answer._head.done():
                raise sender.exception()  # type: ignore[misc]
            await answer._head
        except BaseException:
            sender.cancel()
            raise
        if not sender.done():
            # the app answered first: the rest of the body is not sent, the
            # connection not reused (release closes it)
            sender.cancel()
        elif sender.exception() is not None:
            answer._sent = False
        return answer

    def schedule_sweep(self) -> None:
        if self._sweep is None and not self.closed:
            self._sweep = self.loop.call_later(KEEPALIVE / 2, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for address, pool in list(self._pools.items()):
            pool.sweep(now)
            if pool.unused:
                del self._pools[address]  # the session has probably ended
        if self._pools:
            self.schedule_sweep()

    def close(self) -> None:
        """Close every connection (at shutdown)."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self._pools.values():
            for connection in list(pool.idle):
                connection.close()
            for waiter in pool.waiters:
                if not waiter.done():
                    waiter.set_exception(UpstreamError("the proxy is shutting down"))
        self._pools.clear()
