"""Shared helpers for the tests of tether.sync: servers in threads, connected pairs.

Everything runs over real sockets on 127.0.0.1 (or a Unix socket in a temporary
directory), port 0. No test sleeps to synchronise: threads hand results over through
queues and events, and every wait has a bound (``TIMEOUT``). After each test, the
``no_leaked_threads`` fixture checks that every thread tether started has ended.

Raw peers (hand-written RFC 6455, to behave badly on purpose), the thread helpers and the
TLS material come from ``tests/_peers.py``, shared with tests/asyncio and tests/both.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tether.sync import ClientConnection, Server, ServerConnection, connect, serve

from .._peers import (
    HOST,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    Background,
    Frame,
    RawPeer,
    RawServer,
    TLSFiles,
    accept_key,
    close_payload,
    encode_frame,
    http_get,
    no_leaked_threads,
    raw_client,
    read_http_head,
    tls_files,
    wait_until,
)

__all__ = [
    "HOST", "OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT", "TIMEOUT",
    "Background", "Frame", "RawPeer", "RawServer", "TLSFiles", "accept_key", "close_payload",
    "echo", "encode_frame", "http_get", "raw_client", "read_http_head", "running",
    "sync_server", "tls_files", "uri", "wait_until", "ws_pair",
]


@pytest.fixture(autouse=True)
def no_leaked_threads_after_each_test() -> Iterator[None]:
    """Fail a test that leaves a reader, timer or connection thread running."""
    with no_leaked_threads():
        yield


# --------------------------------------------------------------------------- servers


def echo(ws: ServerConnection) -> None:
    """The echo handler of the documentation."""
    for message in ws:
        ws.send(message)


def uri(server: Server, path: str = "/", scheme: str = "ws") -> str:
    return f"{scheme}://{HOST}:{server.port}{path}"


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Run ``server.serve_forever()`` in a thread; shut it down on exit."""
    serving = Background(server.serve_forever, "test-serve-forever")
    try:
        yield server
    finally:
        server.shutdown()
        serving.result()


@contextlib.contextmanager
def sync_server(
    handler: Callable[[ServerConnection], Any] = echo, **options: Any
) -> Iterator[Server]:
    """A tether.sync server on 127.0.0.1, a free port, accepting in a thread."""
    options.setdefault("close_timeout", 2)
    with running(serve(handler, HOST, 0, **options)) as server:
        yield server


@contextlib.contextmanager
def ws_pair(
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> Iterator[tuple[ServerConnection, ClientConnection]]:
    """A connected (server side, client side) pair over a real loopback socket.

    The handler hands its connection to the test and waits until it is closed, so the
    test drives both ends.
    """
    handed: queue.Queue[ServerConnection] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        handed.put(ws)
        ws.wait_closed()

    client_options = dict(client_options or {})
    client_options.setdefault("close_timeout", 2)
    with sync_server(handler, **(server_options or {})) as server, connect(
        uri(server), **client_options
    ) as client:
        yield handed.get(timeout=TIMEOUT), client


