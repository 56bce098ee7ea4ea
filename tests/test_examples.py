"""The programs in examples/ run for real: each starts in a subprocess on a free port.

A test starts an example with ``--host 127.0.0.1 --port PORT``, polls the port until it
accepts connections (bounded by ``TIMEOUT``, failing at once if the process exits), talks
to it with tether's client (urllib for plain HTTP) and stops it with SIGTERM, killing it
if it does not exit in time. Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

import tether

T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HOST = "127.0.0.1"
#: Upper bound of every single wait: start-up, a reply, a shutdown.
TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the examples stop on SIGTERM through loop signal handlers"
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine in a fresh event loop, bounded by ``TIMEOUT``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Example:
    """A running example program."""

    script: str
    proc: subprocess.Popen[bytes]
    port: int
    stdout: IO[bytes]
    stderr: IO[bytes]

    @property
    def uri(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    def output(self) -> str:
        """What the program printed so far, for assertion messages."""
        parts = []
        for name, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            stream.seek(0)
            parts.append(f"--- {name}\n{stream.read().decode(errors='replace')}")
        return "\n".join(parts)

    def wait_until_listening(self) -> None:
        """Poll the port until it accepts a TCP connection, at most ``TIMEOUT`` seconds."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.script} did not listen within {TIMEOUT} s\n{self.output()}")
            # The poll interval is a bounded wait on the process: it also notices a crash.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)
                pytest.fail(f"{self.script} exited with {self.proc.returncode}\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``TIMEOUT``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        return self.proc.returncode


@contextlib.contextmanager
def example(script: str, *args: str) -> Iterator[Example]:
    """Start ``examples/<script>`` on a free port; stop it on exit."""
    port = free_port()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--host", HOST, "--port", str(port), *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        running = Example(script, proc, port, stdout, stderr)
        try:
            running.wait_until_listening()
            yield running
        finally:
            running.stop()


def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` without any proxy from the environment; return status and body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


# ------------------------------------------------------------------------ echo server


def test_echo_server_echoes_text_and_binary() -> None:
    with example("echo_server.py") as server:

        async def client() -> list[str | bytes]:
            async with tether.connect(server.uri) as ws:
                replies = []
                for message in ("hello", b"\x00\x01\xff", "é" * 100_000):
                    await ws.send(message)
                    replies.append(await ws.recv())
                return replies

        assert run(client()) == ["hello", b"\x00\x01\xff", "é" * 100_000]


def test_echo_server_negotiates_compression_by_default() -> None:
    with example("echo_server.py") as server:

        async def client() -> str | None:
            async with tether.connect(server.uri) as ws:
                assert ws.response is not None
                return ws.response.headers.get("Sec-WebSocket-Extensions")

        extensions = run(client())
        assert extensions is not None and extensions.startswith("permessage-deflate")


def test_echo_server_closes_connections_with_1001_on_sigterm() -> None:
    with example("echo_server.py") as server:

        async def client() -> tether.ConnectionClosed:
            async with tether.connect(server.uri) as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                server.proc.send_signal(signal.SIGTERM)
                with pytest.raises(tether.ConnectionClosed) as info:
                    await ws.recv()
                return info.value

        closed = run(client())
        assert server.proc.wait(timeout=TIMEOUT) == 0, server.output()
    assert isinstance(closed, tether.ConnectionClosedOK)
    assert closed.code == 1001


# ------------------------------------------------------------------------ echo client


def test_echo_client_prints_the_replies() -> None:
    with example("echo_server.py") as server:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "echo_client.py"), "--uri", server.uri,
             "first", "second message"],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first", "second message"]


def test_echo_client_port_option_and_default_message() -> None:
    with example("echo_server.py") as server:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "echo_client.py"), "--port", str(server.port)],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello, tether!"]


def test_echo_client_exits_1_when_nothing_listens() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_client.py"), "--uri", f"ws://{HOST}:{free_port()}"],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


# ------------------------------------------------------------------------ chat server


def test_chat_server_relays_messages_to_every_member() -> None:
    with example("chat_server.py") as server:

        async def client() -> None:
            async with tether.connect(server.uri) as alice:
                await alice.send("alice")
                assert await alice.recv() == "* alice joined"
                async with tether.connect(server.uri) as bob:
                    await bob.send("bob")
                    assert await bob.recv() == "* bob joined"
                    assert await alice.recv() == "* bob joined"
                    await alice.send("hello, bob")
                    assert await alice.recv() == "alice: hello, bob"
                    assert await bob.recv() == "alice: hello, bob"
                    await bob.send("hi!")
                    assert await bob.recv() == "bob: hi!"
                    assert await alice.recv() == "bob: hi!"
                assert await alice.recv() == "* bob left"

        run(client())


def test_chat_server_refuses_an_empty_name_with_1008() -> None:
    with example("chat_server.py") as server:

        async def client() -> tether.ConnectionClosed:
            async with tether.connect(server.uri) as ws:
                await ws.send("   ")
                with pytest.raises(tether.ConnectionClosed) as info:
                    await ws.recv()
                return info.value

        closed = run(client())
    assert isinstance(closed, tether.ConnectionClosedError)
    assert closed.code == 1008


def test_chat_server_survives_a_dropped_client() -> None:
    with example("chat_server.py") as server:

        async def client() -> None:
            async with tether.connect(server.uri) as alice:
                await alice.send("alice")
                assert await alice.recv() == "* alice joined"
                carol = await tether.connect(server.uri)
                await carol.send("carol")
                assert await carol.recv() == "* carol joined"
                assert await alice.recv() == "* carol joined"
                # No closing handshake: the TCP connection just ends.
                assert carol.transport is not None
                carol.transport.abort()
                await carol.wait_closed()
                assert await alice.recv() == "* carol left"
                await alice.send("still here")
                assert await alice.recv() == "alice: still here"

        run(client())
        assert server.stop() == 0
        # The handler treats a dropped client as an ordinary way to leave: nothing logged.
        assert "Traceback" not in server.output(), server.output()


# ---------------------------------------------------------------------- health check


def test_health_check_answers_plain_http() -> None:
    with example("health_check.py") as server:
        assert http_get(f"http://{HOST}:{server.port}/healthz") == (200, "OK\n")
        status, body = http_get(f"http://{HOST}:{server.port}/")
    # Not /healthz and not a WebSocket upgrade: the handshake refuses it.
    assert status == 426
    assert "WebSocket" in body


def test_health_check_still_serves_websocket() -> None:
    with example("health_check.py") as server:

        async def client() -> str | bytes:
            async with tether.connect(server.uri) as ws:
                await ws.send("over the same port")
                return await ws.recv()

        assert run(client()) == "over the same port"
