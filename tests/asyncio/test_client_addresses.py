"""Where tether.connect goes: Unix sockets, IPv6 literals, TLS with the system's trust
store or a context of one's own, and ``server_hostname``.

Real servers on 127.0.0.1, ::1 (skipped where the machine has no IPv6) or a Unix socket
in a temporary directory; TLS with a self-signed certificate made for the tests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator

import pytest

import tether

from .conftest import TIMEOUT, Run, TLSFiles, echo


async def tell_host(ws: tether.ServerConnection) -> None:
    """Send the Host header the client sent, then echo."""
    await ws.send(ws.request.headers["Host"] if ws.request else "")
    async for message in ws:
        await ws.send(message)


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


# ---------------------------------------------------------------------------- Unix


def test_unix_connect(run_any: Run, unix_path: str) -> None:
    async def main() -> None:
        async with tether.unix_serve(tell_host, unix_path), tether.unix_connect(unix_path) as ws:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "localhost"
            assert ws.request is not None and ws.request.path == "/"
            await ws.send("over a Unix socket")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "over a Unix socket"

    run_any(main())


def test_unix_connect_with_a_uri(run: Run, unix_path: str) -> None:
    """The URI gives the request's path and Host header; the socket is the path's."""

    async def main() -> None:
        async with (
            tether.unix_serve(tell_host, unix_path),
            tether.unix_connect(unix_path, "ws://example.test:8080/feed?x=1") as ws,
        ):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "example.test:8080"
            assert ws.request is not None and ws.request.path == "/feed?x=1"

    run(main())


def test_unix_connect_with_tls(run: Run, unix_path: str, tls_files: TLSFiles) -> None:
    """ssl= on a Unix socket: the URI defaults to wss://localhost/, the name checked."""

    async def main() -> None:
        async with (
            tether.unix_serve(echo, unix_path, ssl=tls_files.server_context()),
            tether.unix_connect(unix_path, ssl=tls_files.client_context()) as ws,
        ):
            assert ws.transport is not None
            assert ws.transport.get_extra_info("ssl_object") is not None
            await ws.send("secret")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "secret"

    run(main())


def test_unix_connect_to_a_missing_socket(run: Run, unix_path: str) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(tether.unix_connect(unix_path), TIMEOUT)

    run(main())


def test_unix_connect_refuses_a_proxy(unix_path: str) -> None:
    with pytest.raises(ValueError, match="proxy"):
        tether.unix_connect(unix_path, proxy="http://127.0.0.1:3128")


# ---------------------------------------------------------------------------- IPv6


@pytest.mark.usefixtures("ipv6")
def test_ipv6_literal(run_any: Run) -> None:
    async def main() -> None:
        async with (
            tether.serve(tell_host, "::1", 0) as server,
            tether.connect(f"ws://[::1]:{server.port}/", proxy=None) as ws,
        ):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"[::1]:{server.port}"
            assert ws.remote_address[0] == "::1"
            await ws.send("six")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "six"

    run_any(main())


@pytest.mark.usefixtures("ipv6")
def test_ipv6_literal_on_the_default_port_has_no_port_in_host() -> None:
    wsuri = tether.connect("wss://[::1]/path").wsuri
    assert (wsuri.host, wsuri.port, wsuri.host_header) == ("::1", 443, "[::1]")


@pytest.mark.usefixtures("ipv6")
def test_ipv6_literal_with_tls_and_server_hostname(run: Run, tls_files: TLSFiles) -> None:
    """The test certificate names localhost and 127.0.0.1, not ::1: server_hostname
    says which name to check, and is the name sent (SNI)."""
    names: list[str | None] = []

    async def main() -> None:
        context = sni_recording_context(tls_files, names)
        async with (
            tether.serve(tell_host, "::1", 0, ssl=context) as server,
            tether.connect(f"wss://[::1]:{server.port}/", ssl=tls_files.client_context(),
                           server_hostname="localhost") as ws,
        ):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"[::1]:{server.port}"

    run(main())
    assert names == ["localhost"]


# ----------------------------------------------------------------------------- TLS


def test_wss_uses_the_system_trust_store_by_default(
    run_any: Run, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssl=: Python's default context, which reads the system's CAs. A self-signed
    certificate fails, until the "system" store (SSL_CERT_FILE) holds it."""

    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0, ssl=tls_files.server_context()) as server:
            target = f"wss://localhost:{server.port}/"
            with pytest.raises(ssl.SSLCertVerificationError, match=r"self.signed|verify"):
                await asyncio.wait_for(tether.connect(target), TIMEOUT)
            monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.cert))
            async with tether.connect(target) as ws:
                await ws.send("trusted")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "trusted"

    run_any(main())


def test_ssl_context_of_ones_own(run_any: Run, tls_files: TLSFiles) -> None:
    async def main() -> None:
        async with (
            tether.serve(echo, "127.0.0.1", 0, ssl=tls_files.server_context()) as server,
            tether.connect(f"wss://127.0.0.1:{server.port}/",
                           ssl=tls_files.client_context()) as ws,
        ):
            assert ws.transport is not None
            ssl_object = ws.transport.get_extra_info("ssl_object")
            assert ssl_object is not None
            assert ssl_object.getpeercert()["subject"] == ((("commonName", "localhost"),),)
            await ws.send("ok")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ok"

    run_any(main())


def test_server_hostname_is_sent_and_checked(run_any: Run, tls_files: TLSFiles) -> None:
    """Connect to an address, check the certificate against another name: SNI carries
    server_hostname; the Host header stays the URI's."""
    names: list[str | None] = []

    async def main() -> None:
        context = sni_recording_context(tls_files, names)
        async with (
            tether.serve(tell_host, "127.0.0.1", 0, ssl=context) as server,
            tether.connect(f"wss://127.0.0.1:{server.port}/", ssl=tls_files.client_context(),
                           server_hostname="localhost") as ws,
        ):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"127.0.0.1:{server.port}"

    run_any(main())
    assert names == ["localhost"]


def test_server_hostname_not_in_the_certificate(run: Run, tls_files: TLSFiles) -> None:
    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0, ssl=tls_files.server_context()) as server:
            with pytest.raises(ssl.SSLCertVerificationError, match=r"wrong\.example"):
                await asyncio.wait_for(
                    tether.connect(f"wss://127.0.0.1:{server.port}/",
                                   ssl=tls_files.client_context(),
                                   server_hostname="wrong.example"),
                    TIMEOUT,
                )

    run(main())


def test_unverified_context_connects_to_any_certificate(run: Run, tls_files: TLSFiles) -> None:
    """What the command line's --insecure does: a context that checks nothing."""

    async def main() -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        async with (
            tether.serve(echo, "127.0.0.1", 0, ssl=tls_files.server_context()) as server,
            tether.connect(f"wss://127.0.0.1:{server.port}/", ssl=context,
                           server_hostname="wrong.example") as ws,
        ):
            await ws.send("anyway")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "anyway"

    run(main())


def test_ssl_with_ws_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="wss://"):
        tether.connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())


def test_wss_to_a_plain_server_fails(run: Run) -> None:
    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0) as server:
            with pytest.raises((ssl.SSLError, tether.InvalidMessage, ConnectionError)):
                await asyncio.wait_for(tether.connect(f"wss://127.0.0.1:{server.port}/"),
                                       TIMEOUT)

    run(main())
