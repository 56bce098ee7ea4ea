"""tether's server against a real browser: Debian's headless Chromium, driven by
playwright-core through ``tests/interop/node/chromium.js``.

The tether server serves the test page itself (``process_request`` answers plain HTTP
on ``/page``), the page opens ``new WebSocket(...)`` to it, through a byte-counting
relay, and chromium.js reports what the page saw as JSON. One browser run per test
covers several sessions, to keep the tests fast.

Needs ``bash .ci/install-peers.sh`` (Chromium and the Node packages); skipped without
them unless ``TETHER_REQUIRE_PEERS=1`` (then they fail).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import tether

from .conftest import HOST, Probe, Relay, Runner, tether_server, within
from .test_node_ws import REPETITIVE, decode, encode, require_peers, run_node

#: bound on a whole test (a browser start takes a second or two)
TEST_TIMEOUT = 60.0
#: bound on chromium.js; it gives up on its own a few seconds before
BROWSER_TIMEOUT = 50.0

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>tether interop</title></head>
<body><p>tether interop test page</p></body></html>
"""

BINARY = bytes(range(256)) + b"\x00\xff" * 100
FRAGMENTS_TEXT = ["frag", "mé", "nted ✓"]
FRAGMENTS_BINARY = [b"\x00\x01", b"\x02" * 1000, b"\xff"]


@pytest.fixture(autouse=True)
def _chromium_peers() -> None:
    require_peers(chromium=True)


class Site:
    """What the tether server saw: WebSocket offers, and how each session ended."""

    def __init__(self) -> None:
        self.offers: dict[str, str | None] = {}
        self.origins: dict[str, str | None] = {}
        self.answers: dict[str, str | None] = {}
        self.closed: dict[str, Probe[tuple[int | None, str | None]]] = {
            path: Probe() for path in ("/echo", "/server-close", "/fragmented")
        }

    def process_request(self, ws: tether.ServerConnection, request: tether.Request
                        ) -> tether.Response | None:
        """Serve the page on plain HTTP; record each WebSocket request's offer."""
        if "websocket" not in (request.headers.get("Upgrade") or "").lower():
            if request.path == "/page":
                headers = tether.Headers({"Content-Type": "text/html; charset=utf-8",
                                          "Cache-Control": "no-store"})
                return tether.Response(200, headers, PAGE)
            return ws.respond(404, "Not Found\n")
        self.offers[request.path] = request.headers.get("Sec-WebSocket-Extensions")
        self.origins[request.path] = request.headers.get("Origin")
        return None

    async def handler(self, ws: tether.ServerConnection) -> None:
        assert ws.request is not None and ws.response is not None
        path = ws.request.path
        self.answers[path] = ws.response.headers.get("Sec-WebSocket-Extensions")
        if path == "/echo":
            # echo until the page closes
            await self.closed[path].run(self._echo_until_closed(ws))
        elif path == "/server-close":
            # echo one message, then close with 4000
            await ws.send(await ws.recv())
            await self.closed[path].run(self._close(ws, 4000, "bye from tether"))
        elif path == "/fragmented":
            # send two fragmented messages; the page closes
            await ws.send(iter(FRAGMENTS_TEXT))
            await ws.send(iter(FRAGMENTS_BINARY))
            await self.closed[path].run(self._echo_until_closed(ws))
        else:  # pragma: no cover - the page asks only for the paths above
            await ws.close(4004, f"no such path {path}")

    async def _echo_until_closed(self, ws: tether.ServerConnection
                                 ) -> tuple[int | None, str | None]:
        async for message in ws:  # ends quietly on 1000
            await ws.send(message)
        return ws.close_code, ws.close_reason

    async def _close(self, ws: tether.ServerConnection, code: int, reason: str
                     ) -> tuple[int | None, str | None]:
        await within(ws.close(code, reason))
        return ws.close_code, ws.close_reason


async def run_browser(page_url: str, ws_url: str) -> dict[str, Any]:
    """Run chromium.js: the three sessions of :class:`Site`, through ``ws_url``."""
    sessions = [
        {"url": ws_url + "echo",
         "send": [encode("hello, wörld ✓"), encode(BINARY), encode(REPETITIVE),
                  encode(REPETITIVE.encode())],
         "expect": 4, "close": [1000, "page done"]},
        {"url": ws_url + "server-close", "send": [encode("hello")], "expect": 1,
         "close": None},
        {"url": ws_url + "fragmented", "send": [], "expect": 2, "close": [1000, ""]},
    ]
    result = await run_node("chromium.js", page_url,
                            spec={"sessions": sessions, "timeout": BROWSER_TIMEOUT - 8},
                            timeout=BROWSER_TIMEOUT)
    assert result.get("error") is None, json.dumps(result, indent=1)[:4000]
    assert len(result["sessions"]) == len(sessions), result
    for session in result["sessions"]:
        assert session["error"] is None, session
        session["received"] = [decode(m) for m in session["received"]]
    return result


@pytest.mark.parametrize("compression", ["deflate", None])
def test_chromium(run: Runner, compression: str | None) -> None:
    """Chromium offers permessage-deflate; tether accepts it (or not, when off), and
    echoes text, binary and 64 KiB of repetitive text, compressed on the wire; the
    page sees tether's close 4000, tether sees the page's close 1000."""

    async def main() -> None:
        site = Site()
        async with tether_server(site.handler, compression=compression,
                                 process_request=site.process_request) as url, Relay(
            url
        ) as relay:
            port = url.removeprefix(f"ws://{HOST}:").rstrip("/")
            result = await run_browser(f"http://{HOST}:{port}/page", relay.url)
            echo, server_close, fragmented = result["sessions"]

            # -- what Chromium offered, what tether answered, what the page saw
            assert "Chrome/" in result["userAgent"]
            for path in ("/echo", "/server-close", "/fragmented"):
                assert site.offers[path] == "permessage-deflate; client_max_window_bits"
                assert site.origins[path] == f"http://{HOST}:{port}"
            if compression is None:
                assert set(site.answers.values()) == {None}
                assert echo["extensions"] == ""
            else:
                answer = site.answers["/echo"]
                assert answer is not None and answer.startswith("permessage-deflate")
                assert "client_max_window_bits=" in answer
                # the page's ws.extensions is the server's answer
                assert echo["extensions"] == answer
                assert server_close["extensions"] == fragmented["extensions"] == answer

            # -- echoes, then the page closes with 1000
            assert echo["received"] == ["hello, wörld ✓", BINARY, REPETITIVE,
                                        REPETITIVE.encode()]
            assert echo["close"] == {"code": 1000, "reason": "", "wasClean": True}
            assert await site.closed["/echo"].result() == (1000, "page done")

            # -- tether closes with 4000: the page's onclose sees it
            assert server_close["received"] == ["hello"]
            assert server_close["close"] == {"code": 4000, "reason": "bye from tether",
                                             "wasClean": True}
            # Chromium answers with the same code and reason
            assert await site.closed["/server-close"].result() == (4000, "bye from tether")

            # -- fragmented messages from tether arrive whole
            assert fragmented["received"] == ["".join(FRAGMENTS_TEXT),
                                              b"".join(FRAGMENTS_BINARY)]
            assert await site.closed["/fragmented"].result() == (1000, "")

        # -- on the wire: 2 x 64 KiB each way, compressed to a few KiB when negotiated
        if compression is None:
            assert relay.upstream > 2 * len(REPETITIVE)
            assert relay.downstream > 2 * len(REPETITIVE)
        else:
            assert relay.upstream < 8000, relay.upstream
            assert relay.downstream < 8000, relay.downstream

    run(main(), timeout=TEST_TIMEOUT)
