"""Servers and clients of both layers negotiate alike: handlers, process_request, origins,
subprotocols, compression, TLS. Each test runs once per layer (conftest.py)."""

from __future__ import annotations

import logging
import queue
import ssl
from collections.abc import Sequence
from typing import Any

import pytest

import tether
import tether.sync

from .._peers import TIMEOUT, TLSFiles, http_get
from .conftest import Layer, Peer

# ---------------------------------------------------------------------------- handler


def test_handler_return_closes_with_1000(layer: Layer) -> None:
    def handler(ws: Peer) -> None:
        ws.send("bye")

    with layer.serve(handler) as server, layer.connect(server.uri()) as ws:
        assert ws.recv() == "bye"
        with pytest.raises(tether.ConnectionClosedOK) as info:
            ws.recv()
        assert info.value.code == 1000


def test_handler_exception_closes_with_1011_and_logs(
    layer: Layer, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(ws: Peer) -> None:
        raise ZeroDivisionError("handler bug")

    with layer.serve(handler) as server, layer.connect(server.uri()) as ws:
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1011
    errors = [r for r in caplog.records
              if r.name == "tether.server" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "connection handler failed" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ZeroDivisionError


# ---------------------------------------------------------------- opening handshake


def test_process_request_health_check_on_the_same_port(layer: Layer) -> None:
    def process_request(conn: Any, request: tether.Request) -> tether.Response | None:
        if request.path == "/healthz":
            return conn.respond(200, "OK\n")  # type: ignore[no-any-return]
        return None

    with layer.serve(process_request=process_request) as server:
        status, headers, body = http_get(server.port, "/healthz")
        assert (status, body) == (200, b"OK\n")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        with layer.connect(server.uri("/chat")) as ws:
            ws.send("still a WebSocket server")
            assert ws.recv() == "still a WebSocket server"


def test_process_request_rejects_with_401(layer: Layer) -> None:
    def process_request(conn: Any, request: tether.Request) -> tether.Response | None:
        if request.headers.get("Authorization") != "Bearer sesame":
            return conn.respond(401, "token required\n")  # type: ignore[no-any-return]
        return None

    with layer.serve(process_request=process_request) as server:
        with pytest.raises(tether.InvalidStatus) as info:
            layer.connect(server.uri())
        assert info.value.response.status == 401
        assert info.value.response.body == b"token required\n"
        with layer.connect(server.uri(), additional_headers={"Authorization": "Bearer sesame"}):
            pass


def test_process_response_changes_the_response(layer: Layer) -> None:
    def process_response(conn: Any, request: tether.Request,
                         response: tether.Response) -> tether.Response | None:
        response.headers["X-Served-By"] = layer.name
        return None

    with layer.serve(process_response=process_response) as server, layer.connect(
        server.uri()
    ) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Served-By"] == layer.name


def test_plain_http_get_is_426(layer: Layer) -> None:
    with layer.serve() as server:
        status, headers, body = http_get(server.port, "/")
        assert status == 426
        assert headers["upgrade"] == "websocket"
        assert b"You need a WebSocket client" in body


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://good.example", True),
        ("https://evil.example", False),
        (None, True),
    ],
)
def test_origins(layer: Layer, origin: str | None, allowed: bool) -> None:
    with layer.serve(origins=["https://good.example", None]) as server:
        if allowed:
            with layer.connect(server.uri(), origin=origin):
                pass
        else:
            with pytest.raises(tether.InvalidStatus) as info:
                layer.connect(server.uri(), origin=origin)
            assert info.value.response.status == 403
            assert b"origin not allowed: https://evil.example" in info.value.response.body


def test_missing_origin_refused_when_not_listed(layer: Layer) -> None:
    with layer.serve(origins=["https://good.example"]) as server:
        with pytest.raises(tether.InvalidStatus) as info:
            layer.connect(server.uri())
        assert info.value.response.status == 403


def test_subprotocols(layer: Layer) -> None:
    chosen: queue.Queue[str | None] = queue.Queue()

    def handler(ws: Peer) -> None:
        chosen.put(ws.subprotocol)

    with layer.serve(handler, subprotocols=["chat", "superchat"]) as server:
        with layer.connect(server.uri(), subprotocols=["superchat", "other"]) as ws:
            assert ws.subprotocol == "superchat"
        assert chosen.get(timeout=TIMEOUT) == "superchat"
        with layer.connect(server.uri(), subprotocols=["unknown"]) as ws:
            assert ws.subprotocol is None
        with layer.connect(server.uri()) as ws:
            assert ws.subprotocol is None


def test_subprotocol_not_offered_is_a_negotiation_error(layer: Layer) -> None:
    def process_response(conn: Any, request: tether.Request,
                         response: tether.Response) -> None:
        response.headers["Sec-WebSocket-Protocol"] = "never-offered"

    with layer.serve(process_response=process_response) as server, pytest.raises(
        tether.NegotiationError
    ):
        layer.connect(server.uri(), subprotocols=["chat"])


def test_select_subprotocol(layer: Layer) -> None:
    seen: queue.Queue[tuple[Any, list[str]]] = queue.Queue()

    def select(conn: Any, offered: Sequence[str]) -> str | None:
        seen.put((conn, list(offered)))
        return offered[-1] if offered else None

    with layer.serve(select_subprotocol=select) as server, layer.connect(
        server.uri(), subprotocols=["a", "b"]
    ) as ws:
        assert ws.subprotocol == "b"
        conn, offered = seen.get(timeout=TIMEOUT)
        assert isinstance(conn, (tether.ServerConnection, tether.sync.ServerConnection))
        assert offered == ["a", "b"]


@pytest.mark.parametrize("server_compression", ["deflate", None])
@pytest.mark.parametrize("client_compression", ["deflate", None])
def test_compression_negotiation(
    layer: Layer, server_compression: str | None, client_compression: str | None
) -> None:
    with layer.serve(compression=server_compression) as server, layer.connect(
        server.uri(), compression=client_compression
    ) as ws:
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        on = server_compression is not None and client_compression is not None
        assert (extensions is not None) == on
        if on:
            assert extensions.startswith("permessage-deflate")
        ws.send("a" * 10_000)
        assert ws.recv() == "a" * 10_000


# ------------------------------------------------------------------------------- TLS


def test_tls(layer: Layer, tls_files: TLSFiles) -> None:
    with layer.serve(ssl=tls_files.server_context()) as server:
        uri = server.uri(scheme="wss")
        with layer.connect(uri, ssl=tls_files.client_context()) as ws:
            messages: list[str | bytes] = ["over TLS", b"\x00" * 300_000, "é" * 100_000]
            for message in messages:
                ws.send(message)
                assert ws.recv() == message
            assert ws.ping() > 0
        # wss:// verifies by default: the self-signed certificate is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            layer.connect(uri)
        # The name checked is the host's, unless server_hostname says otherwise.
        with pytest.raises(ssl.SSLCertVerificationError):
            layer.connect(uri, ssl=tls_files.client_context(),
                          server_hostname="not-the-name.example")
        with layer.connect(f"wss://localhost:{server.port}/", ssl=tls_files.client_context()):
            pass


def test_tls_closing_handshake(layer: Layer, tls_files: TLSFiles) -> None:
    with layer.serve(ssl=tls_files.server_context()) as server, layer.connect(
        server.uri(scheme="wss"), ssl=tls_files.client_context()
    ) as ws:
        ws.close(4000, "done")
        assert ws.close_code == 4000
        assert ws.state is tether.State.CLOSED
