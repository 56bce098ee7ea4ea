"""Where tether.sync.connect goes: Unix sockets, IPv6 literals, TLS with the system's
trust store or a context of one's own, and ``server_hostname``.

The twin of tests/asyncio/test_client_addresses.py, with threads: servers on
127.0.0.1, ::1 (skipped where the machine has no IPv6) or a Unix socket.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.sync import ServerConnection, connect, serve, unix_connect, unix_serve

from .conftest import HOST, TIMEOUT, TLSFiles, echo, running, sync_server


def tell_host(ws: ServerConnection) -> None:
    """Send the Host header the client sent, then echo."""
    ws.send(ws.request.headers["Host"] if ws.request else "")
    for message in ws:
        ws.send(message)


def sni_recording_context(tls_files: TLSFiles, names: list[str | None]) -> ssl.SSLContext:
    """The server's context, noting the name each client asks for (SNI)."""
    context = tls_files.server_context()

    def note(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = note
    return context


@pytest.fixture(scope="module")
def ipv6() -> Iterator[None]:
    """Skip where the loopback interface has no IPv6 address."""
    if not socket.has_ipv6:
        pytest.skip("Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    yield


@pytest.fixture
def unix_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A short path for a Unix socket (sun_path is limited to about 100 bytes)."""
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    yield str(tmp_path_factory.mktemp("tt") / "ws.sock")


# ---------------------------------------------------------------------------- Unix


def test_unix_connect(unix_path: str) -> None:
    with running(unix_serve(tell_host, unix_path, close_timeout=2)), unix_connect(
        unix_path, close_timeout=2
    ) as ws:
        assert ws.recv(timeout=TIMEOUT) == "localhost"
        ws.send("over a Unix socket")
        assert ws.recv(timeout=TIMEOUT) == "over a Unix socket"


def test_unix_connect_with_a_uri(unix_path: str) -> None:
    with running(unix_serve(tell_host, unix_path, close_timeout=2)), unix_connect(
        unix_path, "ws://example.test:8080/feed?x=1", close_timeout=2
    ) as ws:
        assert ws.recv(timeout=TIMEOUT) == "example.test:8080"
        assert ws.request is not None and ws.request.path == "/feed?x=1"


def test_unix_connect_with_tls(unix_path: str, tls_files: TLSFiles) -> None:
    with running(
        unix_serve(echo, unix_path, ssl=tls_files.server_context(), close_timeout=2)
    ), unix_connect(unix_path, ssl=tls_files.client_context(), close_timeout=2) as ws:
        assert ws.request is not None and ws.request.headers["Host"] == "localhost"
        ws.send("secret")
        assert ws.recv(timeout=TIMEOUT) == "secret"


def test_unix_connect_to_a_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        unix_connect(str(tmp_path / "missing.sock"))


# ---------------------------------------------------------------------------- IPv6


@pytest.mark.usefixtures("ipv6")
def test_ipv6_literal() -> None:
    with running(serve(tell_host, "::1", 0, close_timeout=2)) as server, connect(
        f"ws://[::1]:{server.port}/", proxy=None, close_timeout=2
    ) as ws:
        assert ws.recv(timeout=TIMEOUT) == f"[::1]:{server.port}"
        assert ws.remote_address[0] == "::1"
        ws.send("six")
        assert ws.recv(timeout=TIMEOUT) == "six"


@pytest.mark.usefixtures("ipv6")
def test_ipv6_literal_with_tls_and_server_hostname(tls_files: TLSFiles) -> None:
    names: list[str | None] = []
    context = sni_recording_context(tls_files, names)
    with running(serve(tell_host, "::1", 0, ssl=context, close_timeout=2)) as server, connect(
        f"wss://[::1]:{server.port}/", ssl=tls_files.client_context(),
        server_hostname="localhost", close_timeout=2,
    ) as ws:
        assert ws.recv(timeout=TIMEOUT) == f"[::1]:{server.port}"
    assert names == ["localhost"]


# ----------------------------------------------------------------------------- TLS


def test_wss_uses_the_system_trust_store_by_default(
    tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sync_server(ssl=tls_files.server_context()) as server:
        target = f"wss://localhost:{server.port}/"
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(target, close_timeout=2)
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.cert))
        with connect(target, close_timeout=2) as ws:
            ws.send("trusted")
            assert ws.recv(timeout=TIMEOUT) == "trusted"


def test_ssl_context_of_ones_own(tls_files: TLSFiles) -> None:
    with sync_server(ssl=tls_files.server_context()) as server, connect(
        f"wss://{HOST}:{server.port}/", ssl=tls_files.client_context(), close_timeout=2
    ) as ws:
        ws.send("ok")
        assert ws.recv(timeout=TIMEOUT) == "ok"


def test_server_hostname_is_sent_and_checked(tls_files: TLSFiles) -> None:
    names: list[str | None] = []
    context = sni_recording_context(tls_files, names)
    with sync_server(tell_host, ssl=context) as server, connect(
        f"wss://{HOST}:{server.port}/", ssl=tls_files.client_context(),
        server_hostname="localhost", close_timeout=2,
    ) as ws:
        assert ws.recv(timeout=TIMEOUT) == f"{HOST}:{server.port}"
    assert names == ["localhost"]


def test_server_hostname_not_in_the_certificate(tls_files: TLSFiles) -> None:
    with sync_server(ssl=tls_files.server_context()) as server, pytest.raises(
        ssl.SSLCertVerificationError, match=r"wrong\.example"
    ):
        connect(f"wss://{HOST}:{server.port}/", ssl=tls_files.client_context(),
                server_hostname="wrong.example")


def test_ssl_with_ws_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="wss://"):
        connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())
