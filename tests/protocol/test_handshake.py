"""Tests of :mod:`tether.protocol.handshake`: the opening handshake of RFC 6455 section 4."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidOrigin,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
)
from tether.protocol import handshake as handshake_module
from tether.protocol.connection import Protocol, Side
from tether.protocol.deflate import (
    Deflate,
    PerMessageDeflate,
    ServerNegotiator,
    client_accept,
    client_offer,
)
from tether.protocol.frames import OP_TEXT, Frame
from tether.protocol.handshake import (
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    ClientHandshake,
    ServerHandshake,
    accept_key,
    generate_key,
    parse_tokens,
)
from tether.protocol.http import Headers, Request, Response

# RFC 6455 1.3 and 4.2.2: the example key and its accept value.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MASK = b"\x37\xfa\x21\x3d"

BASE_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def request_bytes(
    *,
    replace: dict[str, str] | None = None,
    drop: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
    request_line: str = "GET /chat HTTP/1.1",
) -> bytes:
    """An upgrade request: the RFC 6455 example, with headers replaced, dropped or added."""
    replace = replace or {}
    lines = [request_line]
    for name, value in BASE_HEADERS:
        if name in drop:
            continue
        lines.append(f"{name}: {replace.get(name, value)}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def server_request(data: bytes, **options: Any) -> tuple[ServerHandshake, Request]:
    handshake = ServerHandshake(**options)
    request = handshake.receive_data(data)
    assert request is not None
    return handshake, request


def parse_head(raw: bytes) -> tuple[str, Headers, bytes]:
    """Split a serialised HTTP response into its status line, headers and body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no end of head"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = Headers()
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return status_line, headers, body


def response_101(key: str, *extra: tuple[str, str]) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
        *(f"{n}: {v}" for n, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------- RFC 6455 1.3, 4.2.2


class TestKeys:
    def test_accept_key_rfc_example(self) -> None:
        assert accept_key(KEY) == ACCEPT

    def test_generate_key(self) -> None:
        keys = {generate_key() for _ in range(10)}
        assert len(keys) == 10
        for key in keys:
            assert len(base64.b64decode(key, validate=True)) == 16

    def test_parse_tokens(self) -> None:
        assert parse_tokens(["keep-alive, Upgrade", " ,x ,"]) == ["keep-alive", "Upgrade", "x"]
        assert parse_tokens([]) == []


# ------------------------------------------------------------- RFC 6455 4.2.1


class TestSection4_2ServerHandshake:
    def test_valid_request_gets_101(self) -> None:
        handshake, request = server_request(request_bytes())
        assert request.path == "/chat"
        assert request.method == "GET"
        assert request.host == "server.example.com"
        assert request.headers["Sec-WebSocket-Key"] == KEY
        response = handshake.accept(request)
        assert handshake.exc is None
        assert response.status == 101
        assert response.headers.get_all("Sec-WebSocket-Accept") == [ACCEPT]
        assert response.headers["Upgrade"].lower() == "websocket"
        assert "upgrade" in response.headers["Connection"].lower()
        assert "Sec-WebSocket-Protocol" not in response.headers
        assert "Sec-WebSocket-Extensions" not in response.headers
        raw = handshake.send_response(response)
        status_line, headers, body = parse_head(raw)
        assert status_line == "HTTP/1.1 101 Switching Protocols"
        assert headers.get_all("Sec-WebSocket-Accept") == [ACCEPT]
        assert body == b""

    @pytest.mark.parametrize(
        "replace",
        [
            {"Upgrade": "WebSocket"},
            {"Upgrade": "websocket, h2c"},
            {"Connection": "keep-alive, Upgrade"},
            {"Connection": "upgrade"},
        ],
    )
    def test_header_tokens_are_case_insensitive_lists(self, replace: dict[str, str]) -> None:
        handshake, request = server_request(request_bytes(replace=replace))
        assert handshake.accept(request).status == 101

    @pytest.mark.parametrize(
        ("drop", "replace", "header"),
        [
            (["Upgrade"], {}, "Upgrade"),
            ([], {"Upgrade": "h2c"}, "Upgrade"),
            (["Connection"], {}, "Connection"),
            ([], {"Connection": "keep-alive"}, "Connection"),
        ],
    )
    def test_missing_or_wrong_upgrade_or_connection_is_426(
        self, drop: list[str], replace: dict[str, str], header: str
    ) -> None:
        handshake, request = server_request(request_bytes(drop=drop, replace=replace))
        response = handshake.accept(request)
        assert response.status == 426
        assert isinstance(handshake.exc, InvalidUpgrade)
        assert header in response.body.decode()
        assert response.headers["Upgrade"] == "websocket"
        status_line, _, body = parse_head(handshake.send_response(response))
        assert status_line == "HTTP/1.1 426 Upgrade Required"
        assert body == response.body

    def test_426_keeps_connection_upgrade_on_the_wire(self) -> None:
        # RFC 9110 7.8: "A sender of Upgrade MUST also send an 'upgrade' connection option
        # in the Connection header field". The 426 carries Upgrade: websocket, so the
        # serialised response needs Connection: upgrade (alongside close).
        handshake, request = server_request(request_bytes(drop=["Upgrade"]))
        raw = handshake.send_response(handshake.accept(request))
        _, headers, _ = parse_head(raw)
        assert headers.get("Upgrade") == "websocket"
        tokens = [t.lower() for t in parse_tokens(headers.get_all("Connection"))]
        assert "upgrade" in tokens, raw.decode()

    @pytest.mark.parametrize("version", ["8", "14", "13, 8", None])
    def test_wrong_version_is_426_with_supported_version(self, version: str | None) -> None:
        if version is None:
            data = request_bytes(drop=["Sec-WebSocket-Version"])
        else:
            data = request_bytes(replace={"Sec-WebSocket-Version": version})
        handshake, request = server_request(data)
        response = handshake.accept(request)
        assert response.status == 426
        assert isinstance(handshake.exc, InvalidUpgrade)
        assert response.headers.get_all("Sec-WebSocket-Version") == ["13"]
        _, headers, _ = parse_head(handshake.send_response(response))
        assert headers.get_all("Sec-WebSocket-Version") == ["13"]
        assert "13" in response.body.decode()

    @pytest.mark.parametrize(
        ("drop", "key", "extra"),
        [
            (["Sec-WebSocket-Key"], None, []),
            ([], "not base64!", []),
            ([], base64.b64encode(bytes(15)).decode(), []),
            ([], base64.b64encode(bytes(17)).decode(), []),
            ([], "", []),
            ([], KEY, [("Sec-WebSocket-Key", KEY)]),
        ],
        ids=["missing", "not-base64", "15-bytes", "17-bytes", "empty", "twice"],
    )
    def test_bad_key_is_400_with_readable_body(
        self, drop: list[str], key: str | None, extra: list[tuple[str, str]]
    ) -> None:
        replace = {} if key is None else {"Sec-WebSocket-Key": key}
        handshake, request = server_request(request_bytes(drop=drop, replace=replace, extra=extra))
        response = handshake.accept(request)
        assert response.status == 400
        assert isinstance(handshake.exc, InvalidHeader)
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.body.decode()
        assert "Sec-WebSocket-Key" in body
        status_line, _, raw_body = parse_head(handshake.send_response(response))
        assert status_line == "HTTP/1.1 400 Bad Request"
        assert raw_body == response.body

    def test_method_must_be_get(self) -> None:
        handshake, request = server_request(request_bytes(request_line="POST /chat HTTP/1.1"))
        response = handshake.accept(request)
        assert response.status == 400
        assert "POST" in response.body.decode()

    def test_missing_host_is_invalid(self) -> None:
        with pytest.raises(InvalidMessage) as info:
            ServerHandshake().receive_data(request_bytes(drop=["Host"]))
        assert info.value.status == 400

    def test_malformed_request_is_400_and_can_still_be_answered(self) -> None:
        handshake = ServerHandshake()
        with pytest.raises(InvalidMessage) as info:
            handshake.receive_data(b"NOT HTTP AT ALL\r\n\r\n")
        assert info.value.status == 400
        raw = handshake.send_response(handshake.reject(400, "bad request\n"))
        status_line, headers, body = parse_head(raw)
        assert status_line == "HTTP/1.1 400 Bad Request"
        assert body == b"bad request\n"
        assert headers["Content-Length"] == str(len(body))

    def test_request_in_one_byte_chunks(self) -> None:
        data = request_bytes()
        handshake = ServerHandshake()
        for i in range(len(data) - 1):
            assert handshake.receive_data(data[i : i + 1]) is None
        request = handshake.receive_data(data[-1:])
        assert request is not None
        assert request.headers["Sec-WebSocket-Key"] == KEY
        assert handshake.accept(request).status == 101
        assert handshake.trailing_data == b""

    def test_trailing_data_is_kept(self) -> None:
        frames = Frame(OP_TEXT, b"first").serialize(MASK) + Frame(OP_TEXT, b"2").serialize(MASK)
        handshake, request = server_request(request_bytes() + frames)
        response = handshake.accept(request)
        handshake.send_response(response)
        assert handshake.trailing_data == frames
        proto = Protocol(Side.SERVER)
        proto.receive_data(handshake.trailing_data)
        assert list(proto.messages) == ["first", "2"]

    def test_trailing_data_after_a_request_in_chunks(self) -> None:
        data = request_bytes()
        frames = Frame(OP_TEXT, b"hi").serialize(MASK)
        handshake = ServerHandshake()
        for i in range(len(data) - 1):
            assert handshake.receive_data(data[i : i + 1]) is None
        assert handshake.receive_data(data[-1:] + frames) is not None
        assert handshake.trailing_data == frames

    def test_server_header(self) -> None:
        handshake, request = server_request(request_bytes())
        assert handshake.accept(request).headers.get("Server") == "tether"
        handshake, request = server_request(request_bytes(), server_header=None)
        assert "Server" not in handshake.accept(request).headers

    def test_101_cannot_be_sent_for_a_request_that_did_not_ask_to_upgrade(self) -> None:
        handshake, _ = server_request(request_bytes(drop=["Upgrade"]))
        response = Response(101, Headers({"Upgrade": "websocket"}))
        with pytest.raises(InvalidHandshake):
            handshake.send_response(response)

    @pytest.mark.parametrize(
        "extra", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], ids=["cl", "te"]
    )
    def test_request_with_a_body_is_400_and_cannot_switch(self, extra: tuple[str, str]) -> None:
        handshake, request = server_request(request_bytes(extra=[extra]))
        response = handshake.accept(request)
        assert response.status == 400
        assert b"no body" in response.body
        with pytest.raises(InvalidHandshake):
            handshake.send_response(Response(101, Headers({"Upgrade": "websocket"})))

    def test_101_head_is_what_h11_would_write(self) -> None:
        handshake, request = server_request(request_bytes())
        response = handshake.accept(request)
        response.headers["X-Extra"] = "  spaced value\t"
        raw = handshake.send_response(response)
        assert raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert raw.endswith(b"\r\n\r\n") and raw.count(b"\r\n\r\n") == 1
        status, headers, body = parse_head(raw)
        assert status.startswith("HTTP/1.1 101")
        assert body == b""
        assert headers.get("X-Extra") == "spaced value"
        assert headers.get("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    @pytest.mark.parametrize(
        ("name", "value", "reason"),
        [
            ("Bad Name", "v", "Switching Protocols"),
            ("X-Ok", "nul\x00byte", "Switching Protocols"),
            ("X-Ok", "snowman \u2603", "Switching Protocols"),
            ("X-Ok", "v", "bad\x01reason"),
        ],
    )
    def test_101_with_an_invalid_header_or_reason_is_refused(
        self, name: str, value: str, reason: str
    ) -> None:
        handshake, request = server_request(request_bytes())
        response = handshake.accept(request)
        response.headers._items.append((name, value))
        response.reason = reason
        with pytest.raises(InvalidHandshake):
            handshake.send_response(response)


class TestSection4_2Limits:
    def big_request(self) -> bytes:
        return request_bytes(extra=[("X-Padding", "a" * (MAX_HEAD_SIZE + 1000))])

    def test_oversize_head_in_chunks_is_431(self) -> None:
        data = self.big_request()
        handshake = ServerHandshake()
        with pytest.raises(InvalidMessage) as info:
            for i in range(0, len(data), 1024):
                handshake.receive_data(data[i : i + 1024])
        assert info.value.status == 431
        assert str(MAX_HEAD_SIZE) in str(info.value)
        status_line, _, _ = parse_head(handshake.send_response(handshake.reject(431)))
        assert status_line == "HTTP/1.1 431 Request Header Fields Too Large"

    def test_oversize_head_in_one_chunk_is_431(self) -> None:
        # max_head_size bounds the head however the bytes arrive; a reader may well
        # hand over the whole head (here 17 KiB > 16 KiB) in one call.
        handshake = ServerHandshake()
        with pytest.raises(InvalidMessage) as info:
            handshake.receive_data(self.big_request())
        assert info.value.status == 431

    def test_custom_max_head_size(self) -> None:
        data = request_bytes(extra=[("X-Padding", "a" * 600)])
        handshake = ServerHandshake(max_head_size=512)
        with pytest.raises(InvalidMessage) as info:
            for i in range(0, len(data), 100):
                handshake.receive_data(data[i : i + 100])
        assert info.value.status == 431

    def test_head_just_under_the_limit_is_fine(self) -> None:
        data = request_bytes(extra=[("X-Padding", "a" * (MAX_HEAD_SIZE - 400))])
        assert len(data) < MAX_HEAD_SIZE
        handshake = ServerHandshake()
        request = None
        for i in range(0, len(data), 1024):
            request = handshake.receive_data(data[i : i + 1024])
        assert request is not None
        assert handshake.accept(request).status == 101

    @pytest.mark.parametrize("chunk", [None, 100])
    def test_too_many_headers(self, chunk: int | None) -> None:
        data = request_bytes(extra=[(f"X-H{i}", "v") for i in range(MAX_HEADERS)])
        handshake = ServerHandshake()
        with pytest.raises(InvalidMessage) as info:
            if chunk is None:
                handshake.receive_data(data)
            else:
                for i in range(0, len(data), chunk):
                    handshake.receive_data(data[i : i + chunk])
        assert info.value.status == 431
        assert "headers" in str(info.value)

    def test_max_headers_exactly(self) -> None:
        data = request_bytes(extra=[(f"X-H{i}", "v") for i in range(MAX_HEADERS - 5)])
        handshake, request = server_request(data)
        assert len(request.headers) == MAX_HEADERS
        assert handshake.accept(request).status == 101


class TestSection4_2Origin:
    def test_allowed_origin(self) -> None:
        data = request_bytes(extra=[("Origin", "https://good.example")])
        handshake, request = server_request(data, origins=["https://good.example"])
        assert handshake.accept(request).status == 101

    @pytest.mark.parametrize(
        "origin", ["https://evil.example", "https://good.example:8443", "null"]
    )
    def test_origin_not_allowed_is_403(self, origin: str) -> None:
        data = request_bytes(extra=[("Origin", origin)])
        handshake, request = server_request(data, origins=["https://good.example"])
        response = handshake.accept(request)
        assert response.status == 403
        assert isinstance(handshake.exc, InvalidOrigin)
        assert origin in response.body.decode()
        status_line, _, _ = parse_head(handshake.send_response(response))
        assert status_line == "HTTP/1.1 403 Forbidden"

    def test_missing_origin_is_403_unless_none_is_allowed(self) -> None:
        handshake, request = server_request(request_bytes(), origins=["https://good.example"])
        assert handshake.accept(request).status == 403
        assert isinstance(handshake.exc, InvalidOrigin)
        handshake, request = server_request(request_bytes(), origins=[None, "https://good.example"])
        assert handshake.accept(request).status == 101

    def test_none_allows_only_a_missing_origin(self) -> None:
        data = request_bytes(extra=[("Origin", "https://other.example")])
        handshake, request = server_request(data, origins=[None])
        assert handshake.accept(request).status == 403

    def test_no_origins_option_allows_anything(self) -> None:
        data = request_bytes(extra=[("Origin", "https://anything.example")])
        handshake, request = server_request(data)
        assert handshake.accept(request).status == 101


class TestSection4_2Subprotocols:
    @pytest.mark.parametrize(
        ("offered", "server", "chosen"),
        [
            (["superchat, chat"], ["chat", "superchat"], "chat"),
            (["superchat", "chat"], ["chat", "superchat"], "chat"),
            (["superchat"], ["chat", "superchat"], "superchat"),
            (["other"], ["chat"], None),
            ([], ["chat"], None),
            (["chat"], None, None),
        ],
    )
    def test_server_preference_order(
        self, offered: list[str], server: list[str] | None, chosen: str | None
    ) -> None:
        data = request_bytes(extra=[("Sec-WebSocket-Protocol", v) for v in offered])
        handshake, request = server_request(data, subprotocols=server)
        response = handshake.accept(request)
        assert response.status == 101
        assert handshake.subprotocol == chosen
        assert response.headers.get_all("Sec-WebSocket-Protocol") == ([chosen] if chosen else [])

    def test_select_subprotocol_callback(self) -> None:
        seen: list[list[str]] = []

        def select(offered: Sequence[str]) -> str | None:
            seen.append(list(offered))
            return offered[-1]

        data = request_bytes(
            extra=[("Sec-WebSocket-Protocol", "a, b"), ("Sec-WebSocket-Protocol", "c")]
        )
        handshake, request = server_request(data, select_subprotocol=select)
        response = handshake.accept(request)
        assert seen == [["a", "b", "c"]]
        assert response.headers.get_all("Sec-WebSocket-Protocol") == ["c"]

    def test_select_subprotocol_returning_none(self) -> None:
        data = request_bytes(extra=[("Sec-WebSocket-Protocol", "a")])
        handshake, request = server_request(data, select_subprotocol=lambda offered: None)
        response = handshake.accept(request)
        assert response.status == 101
        assert "Sec-WebSocket-Protocol" not in response.headers

    def test_select_subprotocol_choosing_something_not_offered(self) -> None:
        data = request_bytes(extra=[("Sec-WebSocket-Protocol", "a")])
        handshake, request = server_request(data, select_subprotocol=lambda offered: "zzz")
        response = handshake.accept(request)
        assert response.status != 101
        assert isinstance(handshake.exc, NegotiationError)


class TestSection4_2Extensions:
    def test_deflate_accepted(self) -> None:
        data = request_bytes(extra=[("Sec-WebSocket-Extensions", client_offer(Deflate()))])
        handshake, request = server_request(data, extensions=ServerNegotiator(Deflate()))
        response = handshake.accept(request)
        assert response.status == 101
        [value] = response.headers.get_all("Sec-WebSocket-Extensions")
        assert value.startswith("permessage-deflate")
        assert isinstance(handshake.extension_state, PerMessageDeflate)

    def test_deflate_offers_split_over_headers_first_declined(self) -> None:
        data = request_bytes(
            extra=[
                ("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=99"),
                ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ]
        )
        handshake, request = server_request(data, extensions=ServerNegotiator(Deflate()))
        response = handshake.accept(request)
        [value] = response.headers.get_all("Sec-WebSocket-Extensions")
        assert "client_max_window_bits=11" in value
        assert isinstance(handshake.extension_state, PerMessageDeflate)

    @pytest.mark.parametrize("offer", [None, "x-unknown", "permessage-deflate; bogus"])
    def test_no_acceptable_offer(self, offer: str | None) -> None:
        extra = [] if offer is None else [("Sec-WebSocket-Extensions", offer)]
        handshake, request = server_request(
            request_bytes(extra=extra), extensions=ServerNegotiator(Deflate())
        )
        response = handshake.accept(request)
        assert response.status == 101
        assert "Sec-WebSocket-Extensions" not in response.headers
        assert handshake.extension_state is None

    def test_extensions_disabled(self) -> None:
        data = request_bytes(extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
        handshake, request = server_request(data)
        assert "Sec-WebSocket-Extensions" not in handshake.accept(request).headers


# ------------------------------------------------------------- RFC 6455 4.1


class TestSection4_1ClientRequest:
    @pytest.mark.parametrize(
        "host", ["example.com", "example.com:8080", "[::1]:8765", "[2001:db8::1]", "127.0.0.1:9"]
    )
    def test_request(self, host: str) -> None:
        handshake = ClientHandshake(host, "/feed?x=1")
        raw = handshake.send_request()
        assert raw.startswith(b"GET /feed?x=1 HTTP/1.1\r\n")
        assert raw.endswith(b"\r\n\r\n")
        server = ServerHandshake()
        request = server.receive_data(raw)
        assert request is not None
        assert request.path == "/feed?x=1"
        assert request.headers.get_all("Host") == [host]
        assert request.headers["Upgrade"] == "websocket"
        assert request.headers["Connection"] == "Upgrade"
        assert request.headers["Sec-WebSocket-Version"] == "13"
        assert request.headers["Sec-WebSocket-Key"] == handshake.key
        assert len(base64.b64decode(handshake.key, validate=True)) == 16
        assert request.headers["User-Agent"] == "tether"
        assert "Origin" not in request.headers
        assert "Sec-WebSocket-Protocol" not in request.headers
        assert "Sec-WebSocket-Extensions" not in request.headers
        assert server.accept(request).status == 101

    def test_fresh_key_per_handshake(self) -> None:
        assert ClientHandshake("h", "/").key != ClientHandshake("h", "/").key

    def test_options(self) -> None:
        handshake = ClientHandshake(
            "example.com",
            "/",
            origin="https://app.example",
            subprotocols=["chat", "superchat"],
            extensions_offer="permessage-deflate; client_max_window_bits",
            additional_headers={"Authorization": "Bearer x"},
            user_agent_header="agent/1.0",
        )
        request = ServerHandshake().receive_data(handshake.send_request())
        assert request is not None
        headers = request.headers
        assert headers["Origin"] == "https://app.example"
        assert headers.get_all("Sec-WebSocket-Protocol") == ["chat, superchat"]
        assert headers["Sec-WebSocket-Extensions"] == "permessage-deflate; client_max_window_bits"
        assert headers["Authorization"] == "Bearer x"
        assert headers.get_all("User-Agent") == ["agent/1.0"]

    def test_additional_headers_override_host_and_user_agent(self) -> None:
        handshake = ClientHandshake(
            "example.com",
            "/",
            additional_headers=[("host", "other.example:81"), ("User-Agent", "mine")],
        )
        request = ServerHandshake().receive_data(handshake.send_request())
        assert request is not None
        assert request.headers.get_all("Host") == ["other.example:81"]
        assert request.headers.get_all("User-Agent") == ["mine"]

    def test_no_user_agent(self) -> None:
        handshake = ClientHandshake("example.com", "/", user_agent_header=None)
        assert b"User-Agent" not in handshake.send_request()


def client_response(handshake: ClientHandshake, raw: bytes) -> Response:
    response = handshake.receive_data(raw)
    assert response is not None
    return response


class TestSection4_1ClientChecksResponse:
    def test_full_exchange(self) -> None:
        client = ClientHandshake(
            "example.com", "/", subprotocols=["chat"], extensions_offer=client_offer(Deflate())
        )
        server = ServerHandshake(subprotocols=["chat"], extensions=ServerNegotiator(Deflate()))
        request = server.receive_data(client.send_request())
        assert request is not None
        raw = server.send_response(server.accept(request))
        frames = Frame(OP_TEXT, b"welcome").serialize()
        response = client_response(client, raw + frames)
        assert response.status == 101
        subprotocol, extensions = client.check_response(response)
        assert subprotocol == "chat"
        assert client.trailing_data == frames
        codec = client_accept(extensions, Deflate())
        assert codec is not None
        proto = Protocol(Side.CLIENT, codec=codec)
        proto.receive_data(client.trailing_data)
        assert list(proto.messages) == ["welcome"]

    def test_response_in_one_byte_chunks(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        raw = response_101(client.key)
        for i in range(len(raw) - 1):
            assert client.receive_data(raw[i : i + 1]) is None
        response = client_response(client, raw[-1:])
        assert client.check_response(response) == (None, [])

    @pytest.mark.parametrize(
        "accept", [ACCEPT, "", "x" * 28, None], ids=["other-key", "empty", "garbage", "missing"]
    )
    def test_wrong_accept(self, accept: str | None) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
        if accept is not None:
            lines.append(f"Sec-WebSocket-Accept: {accept}")
        response = client_response(client, ("\r\n".join(lines) + "\r\n\r\n").encode())
        with pytest.raises(InvalidHeader) as info:
            client.check_response(response)
        assert info.value.name == "Sec-WebSocket-Accept"

    def test_accept_twice(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        raw = response_101(client.key, ("Sec-WebSocket-Accept", accept_key(client.key)))
        with pytest.raises(InvalidHeader):
            client.check_response(client_response(client, raw))

    @pytest.mark.parametrize(
        ("upgrade", "connection"),
        [("h2c", "Upgrade"), (None, "Upgrade"), ("websocket", "keep-alive"), ("websocket", None)],
    )
    def test_wrong_upgrade_or_connection(self, upgrade: str | None, connection: str | None) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            f"Sec-WebSocket-Accept: {accept_key(client.key)}",
        ]
        if upgrade is not None:
            lines.append(f"Upgrade: {upgrade}")
        if connection is not None:
            lines.append(f"Connection: {connection}")
        response = client_response(client, ("\r\n".join(lines) + "\r\n\r\n").encode())
        with pytest.raises(InvalidUpgrade):
            client.check_response(response)

    def test_upgrade_and_connection_are_case_insensitive(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        raw = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
            f"Connection: keep-alive, upgrade\r\nSec-WebSocket-Accept: {accept_key(client.key)}"
            "\r\n\r\n"
        ).encode()
        assert client.check_response(client_response(client, raw)) == (None, [])

    def test_non_101_is_invalid_status_with_body(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nX-Why: nope\r\n\r\nforbidden"
        response = client_response(client, raw)
        with pytest.raises(InvalidStatus) as info:
            client.check_response(response)
        assert info.value.response.status == 403
        assert info.value.response.body == b"forbidden"
        assert info.value.response.headers["X-Why"] == "nope"
        assert "403" in str(info.value)

    def test_non_101_body_until_eof(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        assert client.receive_data(b"HTTP/1.1 500 Oops\r\n\r\npartial ") is None
        assert client.receive_data(b"body") is None
        response = client_response(client, b"")
        assert response.status == 500
        assert response.reason == "Oops"
        assert response.body == b"partial body"
        with pytest.raises(InvalidStatus):
            client.check_response(response)

    def test_redirect(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        response = client_response(
            client, b"HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\nContent-Length: 0\r\n\r\n"
        )
        assert response.status == 302
        assert response.headers["Location"] == "ws://elsewhere/"

    @pytest.mark.parametrize(
        ("offered", "answer"),
        [(["chat"], "superchat"), ([], "chat"), (["chat", "superchat"], "chat, superchat")],
    )
    def test_subprotocol_not_offered(self, offered: list[str], answer: str) -> None:
        client = ClientHandshake("example.com", "/", subprotocols=offered)
        client.send_request()
        raw = response_101(client.key, ("Sec-WebSocket-Protocol", answer))
        with pytest.raises(NegotiationError):
            client.check_response(client_response(client, raw))

    def test_subprotocol_offered(self) -> None:
        client = ClientHandshake("example.com", "/", subprotocols=["chat", "superchat"])
        client.send_request()
        raw = response_101(client.key, ("Sec-WebSocket-Protocol", "superchat"))
        assert client.check_response(client_response(client, raw)) == ("superchat", [])

    def test_malformed_response(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        with pytest.raises(InvalidMessage):
            client.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")

    def test_eof_before_response(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        assert client.receive_data(b"HTTP/1.1 101 Swi") is None
        with pytest.raises(InvalidMessage):
            client.receive_data(b"")

    def test_too_many_response_headers(self) -> None:
        client = ClientHandshake("example.com", "/")
        client.send_request()
        raw = response_101(client.key, *((f"X-H{i}", "v") for i in range(MAX_HEADERS)))
        with pytest.raises(InvalidMessage):
            client.receive_data(raw)


# ------------------------------------- the fast path (C and Python twin) and h11 agree


Parser = Callable[[bytes, bool], Any] | None


def _server_outcome(data: bytes, chunk: int | None, parser: Parser) -> tuple[Any, ...]:
    """Feed ``data`` to a ServerHandshake (fast path with ``parser``, or off: None);
    describe what came out: the request, its trailing bytes and the answer, or the
    status of the error."""
    saved = handshake_module.parse_head
    handshake_module.parse_head = parser
    try:
        handshake = ServerHandshake(max_headers=20, max_head_size=1024)
        request = None
        try:
            for i in range(0, len(data), chunk or len(data) or 1):
                request = handshake.receive_data(data[i : i + (chunk or len(data))])
                if request is not None:
                    break
        except InvalidMessage as exc:
            answer = handshake.send_response(handshake.reject(exc.status))
            return ("error", exc.status, answer.split(b"\r\n", 1)[0])
        if request is None:
            return ("incomplete",)
        response = handshake.accept(request)
        answer = handshake.send_response(response)
        if response.status != 101:
            answer = answer.split(b"\r\n", 1)[0]
        return (
            "request", request.method, request.path, request.http_version,
            request.headers.raw_items(), handshake.trailing_data, response.status, answer,
            handshake._h11 is None,  # whether the fast path took it
        )
    finally:
        handshake_module.parse_head = saved


def _assert_same(data: bytes, parser: Parser, chunk: int | None = None) -> tuple[Any, ...]:
    fast = _server_outcome(data, chunk, parser)
    slow = _server_outcome(data, chunk, None)
    if fast[0] == "request":
        assert fast[:-1] == slow[:-1], data
        assert fast[-2] == slow[-2]
    else:
        assert fast == slow, data
    return fast


try:
    from tether._speedups import parse_head as parse_head_c
except ImportError:  # not built
    parse_head_c = None

# The C parser and its pure-Python twin, each checked against h11.
PARSERS = [pytest.param(handshake_module.parse_head_py, id="py")] + (
    [pytest.param(parse_head_c, id="c")] if parse_head_c is not None else []
)

ODD_REQUESTS = {
    "plain": request_bytes(),
    "with frames after": request_bytes() + b"\x81\x82" + MASK + b"ab",
    "lower-case names": request_bytes().replace(b"Upgrade: websocket", b"upgrade: websocket"),
    "tab in value": request_bytes(extra=[("X-A", "a\tb")]),
    "padded values": request_bytes(extra=[("X-A", "  a  ")]),
    "no Host": request_bytes(drop=["Host"]),
    "two Hosts": request_bytes(extra=[("Host", "other")]),
    "HTTP/1.0": request_bytes(request_line="GET /chat HTTP/1.0"),
    "HTTP/2.0": request_bytes(request_line="GET /chat HTTP/2.0"),
    "POST": request_bytes(request_line="POST /chat HTTP/1.1"),
    "unknown method": request_bytes(request_line="BREW /chat HTTP/1.1"),
    "absolute target": request_bytes(request_line="GET http://h/chat?x=1 HTTP/1.1"),
    "space in target": request_bytes(request_line="GET /a b HTTP/1.1"),
    "no version": request_bytes(request_line="GET /chat"),
    "content-length 0": request_bytes(extra=[("Content-Length", "0")]),
    "content-length 3": request_bytes(extra=[("Content-Length", "3")]) + b"abc",
    "bad content-length": request_bytes(extra=[("Content-Length", "x")]),
    "chunked": request_bytes(extra=[("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n",
    "obs-fold": request_bytes(extra=[("X-A", "a\r\n b")]),
    "bare LF": request_bytes().replace(b"\r\n", b"\n"),
    "bare LF at the end": request_bytes()[:-4] + b"\n\r\n",
    "space before colon": request_bytes().replace(b"Host:", b"Host :"),
    "empty name": request_bytes(extra=[("", "x")]),
    "no colon": request_bytes()[:-2] + b"NoColon\r\n\r\n",
    "control character": request_bytes(extra=[("X-A", "a\x01b")]),
    "NUL": request_bytes(extra=[("X-A", "a\x00b")]),
    "latin-1 value": request_bytes(extra=[("X-A", "caf\xe9")]),
    "bad name": request_bytes(extra=[("X(A)", "1")]),
    "too many headers": request_bytes(extra=[(f"X-{i}", "v") for i in range(20)]),
    "head too large": request_bytes(extra=[("X-A", "a" * 1100)]),
    "head just fits": request_bytes(extra=[("X-A", "a" * 800)]),
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)) + b"\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "empty line first": b"\r\n" + request_bytes(),
    "no Upgrade": request_bytes(drop=["Upgrade"]),
}


@pytest.mark.parametrize("parser", PARSERS)
class TestFastPath:
    """A server reads common requests with parse_head; whatever the bytes, the outcome
    (request, trailing bytes, answer or error status) is h11's."""

    @pytest.mark.parametrize("name", list(ODD_REQUESTS))
    @pytest.mark.parametrize("chunk", [None, 1, 7])
    def test_same_outcome_as_h11(self, name: str, chunk: int | None, parser: Parser) -> None:
        _assert_same(ODD_REQUESTS[name], parser, chunk)

    @pytest.mark.parametrize("name", ["plain", "with frames after", "tab in value",
                                      "lower-case names", "padded values", "head just fits"])
    def test_fast_path_takes_common_requests(self, name: str, parser: Parser) -> None:
        outcome = _assert_same(ODD_REQUESTS[name], parser)
        assert outcome[0] == "request" and outcome[-1], "h11 was used"

    def test_trailing_bytes_after_the_head_are_kept(self, parser: Parser) -> None:
        handshake = ServerHandshake()
        request = handshake.receive_data(request_bytes() + b"ab")
        assert request is not None and handshake._h11 is None
        handshake.receive_trailing(b"cd")
        assert handshake.trailing_data == b"abcd"

    @settings(max_examples=300, deadline=None)
    @given(
        lines=st.lists(
            st.tuples(
                st.sampled_from(["X-A", "Host", "content-length", "X(", "", "Upgrade", "a b"]),
                st.text(alphabet=st.sampled_from("ab 0\t\x01\xe9:\r\n"), max_size=8),
            ),
            max_size=6,
        ),
        chunk=st.sampled_from([None, 1, 5]),
    )
    def test_random_headers(
        self, lines: list[tuple[str, str]], chunk: int | None, parser: Parser
    ) -> None:
        _assert_same(request_bytes(extra=lines), parser, chunk)


@pytest.mark.skipif(parse_head_c is None, reason="tether._speedups is not built")
class TestParseHeadTwins:
    """The C parse_head and its pure-Python twin give the same parts for any bytes."""

    @settings(max_examples=500, deadline=None)
    @given(
        start=st.sampled_from([
            b"GET / HTTP/1.1\r\n", b"GET /a?b HTTP/1.0\r\n", b"HTTP/1.1 101 OK\r\n",
            b"HTTP/1.1 101\r\n", b"HTTP/1.1 101 \r\n", b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 1010\r\n", b"GET  / HTTP/1.1\r\n", b"GET / HTTP/1.2\r\n",
        ]),
        host=st.booleans(),
        lines=st.lists(
            st.tuples(
                st.sampled_from([b"X-A", b"Upgrade", b"X-B", b"HOST", b"content-Length",
                                 b"Transfer-encoding", b" X", b"X(", b""]),
                st.sampled_from([b" v ", b"\tv", b"a\tb", b"", b"  ", b"v\t", b"w"])
                | st.binary(max_size=4),
            ),
            max_size=4,
        ),
        end=st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]),
    )
    def test_same_parts(
        self, start: bytes, host: bool, lines: list[tuple[bytes, bytes]], end: bytes
    ) -> None:
        if host:
            lines = [(b"Host", b"h"), *lines]
        head = start + b"".join(n + b":" + v + b"\r\n" for n, v in lines) + end
        assert parse_head_c is not None
        for response in (False, True):
            assert parse_head_c(head, response) == handshake_module.parse_head_py(head, response)

    @settings(max_examples=300, deadline=None)
    @given(head=st.binary(max_size=64), response=st.booleans())
    def test_same_parts_for_any_bytes(self, head: bytes, response: bool) -> None:
        assert parse_head_c is not None
        request = b"GET / HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n\r\n"
        for data in (head, head + b"\r\n\r\n", request):
            assert parse_head_c(data, response) == handshake_module.parse_head_py(data, response)


def _client_outcome(
    response: bytes | None, chunk: int | None, parser: Parser, **options: Any
) -> tuple[Any, ...]:
    """A ClientHandshake (fast path with ``parser``, or off: None): its request bytes,
    then what reading ``response`` (``None``: a plain 101 for its key; then EOF) gives."""
    saved = handshake_module.parse_head
    handshake_module.parse_head = parser
    try:
        handshake = ClientHandshake("server.example.com", "/chat?x=1", max_headers=20,
                                    max_head_size=1024, **options)
        handshake.key = KEY  # the same request bytes either way
        del handshake.request.headers["Sec-WebSocket-Key"]
        handshake.request.headers["Sec-WebSocket-Key"] = KEY
        try:
            request = handshake.send_request()
        except Exception as exc:  # h11's refusal of a header, either way
            return ("request refused", type(exc).__name__)
        data = response_101(KEY) + b"\x81\x00" if response is None else response
        result: Response | None = None
        try:
            step = chunk or len(data) or 1
            for i in range(0, len(data), step):
                result = handshake.receive_data(data[i : i + step])
                if result is not None:
                    break
            else:
                result = handshake.receive_data(b"")
        except InvalidMessage as exc:
            return (request, "error", str(exc))
        assert result is not None
        trailing = handshake.trailing_data if result.status == 101 else b""
        return (request, result.status, result.reason, result.headers.raw_items(),
                result.body, trailing, handshake._h11 is None)
    finally:
        handshake_module.parse_head = saved


ODD_RESPONSES: dict[str, bytes | None] = {
    "plain 101 and a frame": None,
    "101 without reason": response_101(KEY).replace(b" Switching Protocols", b""),
    "101 with padded value": response_101(KEY, ("X-A", "  a ")),
    "101 HTTP/1.0": response_101(KEY).replace(b"HTTP/1.1", b"HTTP/1.0"),
    "101 bare LF": response_101(KEY).replace(b"\r\n", b"\n"),
    "101 obs-fold": response_101(KEY, ("X-A", "a\r\n b")),
    "101 latin-1": response_101(KEY, ("X-A", "caf\xe9")),
    "101 bad name": response_101(KEY, ("X(A)", "1")),
    "101 too many headers": response_101(KEY, *[(f"X-{i}", "v") for i in range(20)]),
    "101 head too large": response_101(KEY, ("X-A", "a" * 1100)),
    "100 then 101": b"HTTP/1.1 100 Continue\r\n\r\n" + response_101(KEY),
    "404 with body": b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
    "503 until EOF": b"HTTP/1.1 503 Busy\r\n\r\nlater",
    "garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "TLS alert": b"\x15\x03\x01\x00\x02\x02\x46",
    "EOF in the head": b"HTTP/1.1 101 Switching",
    "nothing": b"",
}


@pytest.mark.parametrize("parser", PARSERS)
class TestClientFastPath:
    """A client writes its request and reads a plain 101 without h11; the bytes
    written and whatever is read give what h11 gives."""

    @pytest.mark.parametrize("name", list(ODD_RESPONSES))
    @pytest.mark.parametrize("chunk", [None, 1, 9])
    def test_same_outcome_as_h11(self, name: str, chunk: int | None, parser: Parser) -> None:
        fast = _client_outcome(ODD_RESPONSES[name], chunk, parser)
        slow = _client_outcome(ODD_RESPONSES[name], chunk, None)
        assert fast[:6] == slow[:6]

    def test_fast_path_takes_a_plain_101(self, parser: Parser) -> None:
        outcome = _client_outcome(None, None, parser)
        assert outcome[1] == 101 and outcome[5] == b"\x81\x00" and outcome[-1]

    @pytest.mark.parametrize("headers", [
        {"X-A": "v"}, {"X-A": " v"}, {"X-A": "a\tb"}, {"X-A": "caf\xe9"}, {"X-A": "a\x01"},
        {"X(A)": "v"}, {"X-A": ""}, {"X-A": "a  b"},
    ])
    def test_request_bytes_as_h11_writes_them(
        self, headers: dict[str, str], parser: Parser
    ) -> None:
        fast = _client_outcome(None, None, parser, additional_headers=headers)
        slow = _client_outcome(None, None, None, additional_headers=headers)
        assert fast[:6] == slow[:6]
