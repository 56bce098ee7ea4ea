"""tether.sync.client: connecting, the opening handshake from the client's side, options,
and Ctrl-C while blocked in recv."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tether
from tether.sync import connect, unix_connect, unix_serve

from .conftest import (
    HOST,
    OP_TEXT,
    TIMEOUT,
    RawServer,
    echo,
    running,
    sync_server,
    uri,
)


@pytest.mark.parametrize(
    "bad", ["http://localhost/", "ws://", "ws://host:notaport/", "ws://host/#fragment"]
)
def test_invalid_uri(bad: str) -> None:
    with pytest.raises(tether.InvalidURI):
        connect(bad)


def test_ssl_for_ws_uri_is_an_error() -> None:
    with pytest.raises(ValueError, match="use wss://"):
        connect("ws://localhost/", ssl=True)


def test_connection_refused() -> None:
    with socket.create_server((HOST, 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        connect(f"ws://{HOST}:{port}/")


def test_open_timeout_when_the_server_never_answers() -> None:
    with RawServer(handshake=False) as raw:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"opening handshake timed out after 0\.2 s"):
            connect(raw.uri, open_timeout=0.2)
        assert 0.15 < time.monotonic() - start < 2


def test_invalid_status_carries_the_response() -> None:
    body = b"no such path"
    respond = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with RawServer(respond=respond) as raw:
        with pytest.raises(tether.InvalidStatus) as info:
            connect(raw.uri)
        assert info.value.response.status == 404
        assert info.value.response.body == body
        assert "HTTP 404" in str(info.value)


def test_wrong_accept_key_is_an_invalid_header() -> None:
    respond = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
    )
    with RawServer(respond=respond) as raw, pytest.raises(
        tether.InvalidHeader, match="wrong Sec-WebSocket-Accept"
    ):
        connect(raw.uri)


def test_server_closing_during_the_handshake() -> None:
    with RawServer(respond=b"HTTP/1.1 101 Switch") as raw, pytest.raises(tether.InvalidMessage):
        connect(raw.uri)


def test_subprotocol_not_offered_is_a_negotiation_error() -> None:
    with RawServer(subprotocol="unexpected") as raw, pytest.raises(
        tether.NegotiationError, match="did not offer"
    ):
        connect(raw.uri, subprotocols=["chat"])


def test_extension_not_offered_is_a_negotiation_error() -> None:
    with RawServer(extensions="permessage-deflate") as raw, pytest.raises(
        tether.NegotiationError
    ):
        connect(raw.uri, compression=None)


def test_request_headers() -> None:
    with RawServer() as raw, connect(
        f"ws://user:p%40ss@{HOST}:{raw.port}/path?q=1",
        origin="https://app.example",
        additional_headers={"X-Token": "abc"},
        user_agent_header="my-agent/1.0",
        subprotocols=["chat", "json"],
        close_timeout=0.5,
    ):
        first, headers = raw.requests.get(timeout=TIMEOUT)
        raw.next_peer().close()
    assert first == "GET /path?q=1 HTTP/1.1"
    assert headers["host"] == f"{HOST}:{raw.port}"
    assert headers["origin"] == "https://app.example"
    assert headers["x-token"] == "abc"
    assert headers["user-agent"] == "my-agent/1.0"
    assert headers["sec-websocket-protocol"] == "chat, json"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert headers["sec-websocket-extensions"].startswith("permessage-deflate")


def test_no_compression_offer_when_off() -> None:
    with RawServer() as raw, connect(raw.uri, compression=None, close_timeout=0.5):
        _, headers = raw.requests.get(timeout=TIMEOUT)
        assert "sec-websocket-extensions" not in headers
        raw.next_peer().close()


def test_messages_sent_right_after_the_101_are_not_lost() -> None:
    """Frames that arrive in the same read as the 101 belong to the protocol."""
    from .conftest import accept_key, encode_frame, read_http_head

    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> socket.socket:
            sock, _ = listener.accept()
            _, headers, _ = read_http_head(sock)
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(headers["sec-websocket-key"]).encode() + b"\r\n\r\n"
                + encode_frame(OP_TEXT, b"first", mask=False)
            )
            return sock

        from .conftest import Background

        server_side = Background(answer)
        with connect(f"ws://{HOST}:{port}/", close_timeout=0.5) as ws:
            assert ws.recv(timeout=TIMEOUT) == "first"
            server_side.result().close()


def test_connect_with_sock() -> None:
    with sync_server() as server:
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        with connect(uri(server), sock=sock) as ws:
            ws.send("via sock")
            assert ws.recv(timeout=TIMEOUT) == "via sock"
        with socket.socket() as other, pytest.raises(TypeError, match="unexpected arguments"):
            connect(uri(server), sock=other, source_address=("127.0.0.1", 0))


def test_unix_connect(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.sock")
    with running(unix_serve(echo, path, close_timeout=2)), unix_connect(
        path, "ws://localhost/chat"
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
        assert ws.request is not None and ws.request.path == "/chat"
    with pytest.raises(FileNotFoundError):
        unix_connect(str(tmp_path / "missing.sock"))


# ----------------------------------------------------------------------------- Ctrl-C

CTRL_C_CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from tether.sync import connect

    ws = connect(sys.argv[1])
    print("ready", flush=True)
    ws.recv()  # blocks: the server never sends anything
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_ends_a_script_blocked_in_recv() -> None:
    def handler(ws: tether.sync.ServerConnection) -> None:
        for _ in ws:
            pass

    with sync_server(handler) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_CLIENT_SCRIPT, uri(server)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline() == "ready\n"
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(TIMEOUT) != 0
            assert time.monotonic() - start < 2
            assert "KeyboardInterrupt" in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait(TIMEOUT)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
