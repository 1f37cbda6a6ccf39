"""A database outage during requests: a clear 503, and recovery without a restart.

The portal talks to PostgreSQL through a small TCP forwarder on loopback, which the
tests cut (listening socket and every open connection) and bring back on the same port.
PostgreSQL only: a SQLite file cannot go away like a server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from aimms_portal import config
from aimms_portal.api.app import create_api
from aimms_portal.db import reset_engine
from tests.api.support import API, error, quick_user
from tests.helpers import log_on


class Forwarder:
    """Forwards TCP connections from 127.0.0.1:``port`` to ``upstream``; can be cut."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> int:
        """Listen (on the same port as before, if there was one); returns the port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # the port's old connections linger in TIME_WAIT; rebinding must still work
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)
        return self.port

    def stop(self) -> None:
        """Close the listening socket and every open connection, both ways."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]
        assert not self._threads, "forwarder threads did not stop"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass  # cut by stop() or by the other side
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def forwarded_client(
    db: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Forwarder]]:
    """A client of a portal whose database connections go through a ``Forwarder``."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("needs a PostgreSQL server to cut off")
    forwarder = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    port = forwarder.start()
    through = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    monkeypatch.setenv("AIMMS_PORTAL_DATABASE_URL", through)
    config.get_settings.cache_clear()
    reset_engine()
    try:
        with TestClient(create_api(), client=("203.0.113.7", 50000)) as client:
            yield client, forwarder
    finally:
        reset_engine()
        forwarder.stop()


def _is_unavailable(response) -> str:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"]["code"] == "unavailable"
    return str(body["error"]["message"])


def test_an_unreachable_database_is_a_503_and_the_portal_recovers(forwarded_client):
    client, forwarder = forwarded_client
    quick_user("ann")
    csrf = log_on(client, "ann")
    assert client.get(f"{API}/me").status_code == 200
    assert client.get("/readyz").status_code == 200

    forwarder.stop()
    message = error(client.get(f"{API}/me"), 503, "unavailable")
    assert "database" in message
    ready = client.get("/readyz")
    assert "database" in _is_unavailable(ready)
    assert "database" in ready.json()["problems"]
    # changes and log-ons fail the same clear way, not as a 500 or a wrong password
    error(client.post(f"{API}/tokens", json={"name": "ci"}, headers=csrf), 503, "unavailable")
    login = {"username": "ann", "password": "Correct-horse-9-battery"}
    error(client.post(f"{API}/auth/login", json=login), 503, "unavailable")

    forwarder.start()  # the database is back, on the same address
    me = client.get(f"{API}/me")
    assert me.status_code == 200 and me.json()["username"] == "ann"
    assert client.get("/readyz").json() == {"status": "ok"}
    assert client.post(f"{API}/tokens", json={"name": "ci"}, headers=csrf).status_code == 201


def test_connections_dropped_by_a_database_restart_are_replaced_unnoticed(forwarded_client):
    client, forwarder = forwarded_client
    quick_user("ann")
    log_on(client, "ann")
    assert client.get(f"{API}/me").status_code == 200

    # every pooled connection dies; the next request must not be the one that notices
    forwarder.stop()
    forwarder.start()
    for _ in range(3):
        assert client.get(f"{API}/me").status_code == 200
