"""tether.sync.server: handlers in threads, the opening handshake, HTTP on the same port,
TLS, Unix sockets, and shutting down from another thread or a signal handler."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import tether
from tether.sync import ServerConnection, connect, serve, unix_connect, unix_serve

from .conftest import (
    HOST,
    OP_CLOSE,
    TIMEOUT,
    Background,
    TLSFiles,
    echo,
    raw_client,
    read_http_head,
    running,
    sync_server,
    uri,
    wait_until,
)

# ---------------------------------------------------------------------------- handler


def test_handler_runs_in_a_thread_per_connection() -> None:
    """Two handlers block at once: each connection has a thread of its own."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def handler(ws: ServerConnection) -> None:
        barrier.wait()
        ws.send(threading.current_thread().name)

    with sync_server(handler) as server, connect(uri(server)) as one, connect(
        uri(server)
    ) as two:
        names = {one.recv(timeout=TIMEOUT), two.recv(timeout=TIMEOUT)}
        assert len(names) == 2
        assert all(str(name).startswith("tether-conn-") for name in names)


def test_peer_going_away_in_the_handler_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = threading.Event()

    def handler(ws: ServerConnection) -> None:
        try:
            ws.recv()
        finally:
            done.set()

    with sync_server(handler) as server:
        peer = raw_client(server.port)
        peer.abort()
        assert done.wait(TIMEOUT)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- opening handshake


def test_async_process_request_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def process_request(conn: ServerConnection, request: tether.Request) -> None:
        return None

    with sync_server(process_request=process_request) as server:
        with pytest.raises(tether.InvalidStatus) as info:
            connect(uri(server))
        assert info.value.response.status == 500
    messages = [r.exc_text or "" for r in caplog.records if r.levelno == logging.ERROR]
    assert any("must be a regular function" in text for text in messages)


def test_process_request_exception_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    def process_request(conn: ServerConnection, request: tether.Request) -> None:
        raise RuntimeError("oops")

    with sync_server(process_request=process_request) as server:
        with pytest.raises(tether.InvalidStatus) as info:
            connect(uri(server))
        assert info.value.response.status == 500
    assert any("opening handshake failed" in r.getMessage() for r in caplog.records)


def test_malformed_request_is_400() -> None:
    with sync_server() as server, socket.create_connection((HOST, server.port),
                                                           timeout=TIMEOUT) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        first, _, _ = read_http_head(sock)
        assert first.split()[1] == "400"


def test_open_timeout_drops_a_silent_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.server")
    with sync_server(open_timeout=0.2) as server, socket.create_connection(
        (HOST, server.port), timeout=TIMEOUT
    ) as sock:
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.15 < time.monotonic() - start < 2
    assert any("opening handshake timed out" in r.getMessage() for r in caplog.records)


def test_client_gone_before_the_request() -> None:
    with sync_server() as server:
        socket.create_connection((HOST, server.port), timeout=TIMEOUT).close()
        with connect(uri(server)) as ws:  # the server is still fine
            ws.send("x")
            assert ws.recv(timeout=TIMEOUT) == "x"


def test_trailing_frames_sent_with_the_request_are_not_lost() -> None:
    """Bytes right after the request head belong to the first frame."""
    from .conftest import accept_key, encode_frame

    with sync_server() as server, socket.create_connection((HOST, server.port),
                                                           timeout=TIMEOUT) as sock:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        request = (
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        sock.sendall(request + encode_frame(0x1, b"early", mask=True))
        first, headers, rest = read_http_head(sock)
        assert first.split()[1] == "101"
        assert headers["sec-websocket-accept"] == accept_key(key)
        while len(rest) < 7:
            rest += sock.recv(100)
        assert rest[:7] == b"\x81\x05early"


# ----------------------------------------------------------------------- the server


def test_server_attributes() -> None:
    with sync_server() as server:
        assert server.port == server.socket.getsockname()[1]
        assert server.sockets == (server.socket,)
        assert server.connections == set()
        with connect(uri(server)) as ws:
            ws.send("x")
            ws.recv(timeout=TIMEOUT)
            (conn,) = server.connections
            assert conn.remote_address == ws.local_address
        wait_until(lambda: not server.connections)


def test_shutdown_from_another_thread_closes_clients_with_1001() -> None:
    server = serve(echo, HOST, 0, close_timeout=2)
    serving = Background(server.serve_forever)
    clients = [connect(uri(server)) for _ in range(3)]
    for ws in clients:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    blocked = [Background(ws.recv) for ws in clients]
    start = time.monotonic()
    Background(server.shutdown).result()
    assert time.monotonic() - start < 1
    serving.result()  # serve_forever returned
    for call, ws in zip(blocked, clients, strict=True):
        with pytest.raises(tether.ConnectionClosedOK) as info:
            call.result()
        assert info.value.code == 1001
        assert info.value.reason == "server shutting down"
        assert ws.state is tether.State.CLOSED
    with pytest.raises(ConnectionRefusedError):
        connect(uri(server), open_timeout=TIMEOUT)


def test_shutdown_is_idempotent_and_ends_serve_forever_at_once() -> None:
    server = serve(echo, HOST, 0)
    server.shutdown()
    server.shutdown()
    server.serve_forever()  # returns at once: the server is shut down
    with server:
        pass


def test_serve_forever_twice_is_an_error() -> None:
    with running(serve(echo, HOST, 0)) as server:
        wait_until(lambda: server._serving_thread is not None)
        with pytest.raises(RuntimeError, match="already running"):
            server.serve_forever()


def test_shutdown_without_closing_connections() -> None:
    server = serve(echo, HOST, 0)
    serving = Background(server.serve_forever)
    with connect(uri(server)) as ws:
        server.shutdown(close_connections=False)
        serving.result()
        ws.send("still here")  # the connection outlives the server
        assert ws.recv(timeout=TIMEOUT) == "still here"


def test_shutdown_leaves_a_stuck_handler_behind_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def handler(ws: ServerConnection) -> None:
        entered.set()
        release.wait(TIMEOUT)  # ignores the closing connection

    server = serve(handler, HOST, 0, close_timeout=0.2)
    serving = Background(server.serve_forever)
    with connect(uri(server)) as ws:
        assert entered.wait(TIMEOUT)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 2
        serving.result()
        with pytest.raises(tether.ConnectionClosedOK):
            ws.recv(timeout=TIMEOUT)
    assert any("still running after shutdown" in r.getMessage() for r in caplog.records)
    release.set()


def test_shutdown_aborts_connections_in_the_handshake() -> None:
    with sync_server(open_timeout=None) as server:
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        wait_until(lambda: bool(server._connections))
        server.shutdown()
        assert sock.recv(100) == b""
        sock.close()


def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.sock")
    server = unix_serve(echo, path, close_timeout=2)
    with running(server), unix_connect(path) as ws:
        ws.send("over a unix socket")
        assert ws.recv(timeout=TIMEOUT) == "over a unix socket"
        assert ws.request is not None and ws.request.headers["Host"] == "localhost"
        with pytest.raises(RuntimeError, match="no TCP socket"):
            _ = server.port
    assert not os.path.exists(path)


def test_tls_session(tls_files: TLSFiles) -> None:
    """ssl_object is the session with the server (messages over TLS: tests/both)."""
    with sync_server(ssl=tls_files.server_context()) as server, connect(
        uri(server, scheme="wss"), ssl=tls_files.client_context()
    ) as ws:
        assert ws.ssl_object is not None
        assert ws.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert ws.ssl_object.server_hostname == HOST


def test_tls_concurrent_send_and_recv(tls_files: TLSFiles) -> None:
    """TLS with a reader thread and several senders at once: OpenSSL is never entered
    from two threads (a race there corrupts records or crashes)."""
    count = 300
    with sync_server(ssl=tls_files.server_context()) as server, connect(
        uri(server, scheme="wss"), ssl=tls_files.client_context()
    ) as ws:
        reader = Background(lambda: [ws.recv(timeout=TIMEOUT) for _ in range(3 * count)])

        def send_all(n: int) -> None:
            for i in range(count):
                ws.send(f"{n}:{i}:" + "y" * 3000)

        senders = [Background(functools.partial(send_all, n)) for n in range(3)]
        for sender in senders:
            sender.result(TIMEOUT * 2)
        received = reader.result(TIMEOUT * 2)
        assert len(received) == 3 * count
        for n in range(3):
            assert [m.split(":")[1] for m in map(str, received) if m.startswith(f"{n}:")] == [
                str(i) for i in range(count)
            ]


def test_tls_handshake_failure_does_not_stop_the_server(tls_files: TLSFiles) -> None:
    with sync_server(ssl=tls_files.server_context()) as server:
        # A plaintext client on a TLS port.
        status_line = b""
        with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                status_line = sock.recv(100)
            except ConnectionResetError:
                pass
        assert not status_line.startswith(b"HTTP/1.1 101")
        with connect(uri(server, scheme="wss"), ssl=tls_files.client_context()) as ws:
            ws.send("fine")
            assert ws.recv(timeout=TIMEOUT) == "fine"


def test_server_half_closes_after_the_closing_handshake() -> None:
    with sync_server() as server:
        peer = raw_client(server.port)
        peer.send_frame(OP_CLOSE, b"\x03\xe8")
        assert peer.recv_frame().close_code == 1000
        assert peer.read_eof() == b""
        peer.close()


def test_listen_on_every_interface() -> None:
    server = serve(echo, None, 0, close_timeout=2)
    with running(server), connect(f"ws://127.0.0.1:{server.port}/") as ws:
        ws.send("any interface")
        assert ws.recv(timeout=TIMEOUT) == "any interface"


def test_serve_with_sock() -> None:
    sock = socket.create_server((HOST, 0))
    server = serve(echo, sock=sock, close_timeout=2)
    with running(server), connect(uri(server)) as ws:
        ws.send("given socket")
        assert ws.recv(timeout=TIMEOUT) == "given socket"
    with pytest.raises(ValueError, match="either sock"):
        serve(echo, HOST, 0, sock=sock)


# ------------------------------------------------------------------- signal handlers

SIGNAL_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from tether.sync import serve

    def echo(ws):
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0, close_timeout=2) as server:
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        print(server.port, flush=True)
        server.serve_forever()
    print("stopped", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_shutdown_from_a_signal_handler() -> None:
    """shutdown() in a SIGTERM handler, in the thread running serve_forever: returns
    at once, and serve_forever closes the connections with 1001 before returning."""
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with connect(f"ws://{HOST}:{port}/") as ws:
            ws.send("hi")
            assert ws.recv(timeout=TIMEOUT) == "hi"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(tether.ConnectionClosedOK) as info:
                ws.recv(timeout=TIMEOUT)
            assert info.value.code == 1001
        assert proc.wait(TIMEOUT) == 0
        assert proc.stdout.read() == "stopped\n"
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


CTRL_C_SERVER_SCRIPT = textwrap.dedent(
    """
    from tether.sync import serve

    def echo(ws):
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0, close_timeout=2) as server:
        print(server.port, flush=True)
        server.serve_forever()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_in_serve_forever_closes_connections_with_1001() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SERVER_SCRIPT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = int(proc.stdout.readline())
        with connect(f"ws://{HOST}:{port}/") as ws:
            ws.send("hi")
            assert ws.recv(timeout=TIMEOUT) == "hi"
            proc.send_signal(signal.SIGINT)
            with pytest.raises(tether.ConnectionClosedOK) as info:
                ws.recv(timeout=TIMEOUT)
            assert info.value.code == 1001
        assert proc.wait(TIMEOUT) != 0
        assert "KeyboardInterrupt" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_listen_on_every_address_of_a_name() -> None:
    """"localhost" may resolve to 127.0.0.1 and ::1: the server listens on both, on
    one port, so that clients reach it whichever they pick."""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo("localhost", 0,
                                                                type=socket.SOCK_STREAM)}
    server = serve(echo, "localhost", 0, close_timeout=2)
    with running(server):
        assert {s.getsockname()[0] for s in server.sockets} == addresses
        assert {s.getsockname()[1] for s in server.sockets} == {server.port}
        for address in addresses:
            host = f"[{address}]" if ":" in address else address
            with connect(f"ws://{host}:{server.port}/") as ws:
                ws.send(address)
                assert ws.recv(timeout=TIMEOUT) == address


def test_shutdown_from_a_handler() -> None:
    """A handler may shut the server down (a "stop" command): every connection, its
    own included, is closed with 1001, and nothing waits for the calling handler."""
    def handler(ws: ServerConnection) -> None:
        for message in ws:
            if message == "stop":
                ws.server.shutdown()
                return
            ws.send(message)

    server = serve(handler, HOST, 0, close_timeout=2)
    serving = Background(server.serve_forever)
    with connect(uri(server)) as other, connect(uri(server)) as ws:
        other.send("hi")
        assert other.recv(timeout=TIMEOUT) == "hi"
        start = time.monotonic()
        ws.send("stop")
        for conn in (ws, other):
            with pytest.raises(tether.ConnectionClosedOK) as info:
                conn.recv(timeout=TIMEOUT)
            assert info.value.code == 1001
        serving.result()
        assert time.monotonic() - start < 1
