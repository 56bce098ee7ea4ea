"""Tests of :mod:`tether.protocol.http`: Headers, Request and Response values."""

from __future__ import annotations

import pytest

from tether.protocol.http import Headers, Request, Response


class TestHeaders:
    def test_case_insensitive_lookup_keeps_case(self) -> None:
        headers = Headers([("Sec-WebSocket-Key", "k")])
        assert headers["sec-websocket-key"] == "k"
        assert headers["SEC-WEBSOCKET-KEY"] == "k"
        assert "sec-WebSocket-key" in headers
        assert list(headers) == ["Sec-WebSocket-Key"]
        assert headers.raw_items() == [("Sec-WebSocket-Key", "k")]

    def test_repeated_headers(self) -> None:
        headers = Headers()
        headers["Sec-WebSocket-Protocol"] = "chat"
        headers["sec-websocket-protocol"] = "superchat"
        headers["Host"] = "example.com"
        assert headers["Sec-WebSocket-Protocol"] == "chat, superchat"
        assert headers.get_all("SEC-WEBSOCKET-PROTOCOL") == ["chat", "superchat"]
        assert len(headers) == 2
        assert list(headers) == ["Sec-WebSocket-Protocol", "Host"]
        assert headers.items() == [
            ("Sec-WebSocket-Protocol", "chat"),
            ("sec-websocket-protocol", "superchat"),
            ("Host", "example.com"),
        ]

    def test_missing(self) -> None:
        headers = Headers()
        with pytest.raises(KeyError):
            headers["Host"]
        assert headers.get("Host") is None
        assert headers.get("Host", "default") == "default"
        assert headers.get_all("Host") == []
        assert "Host" not in headers
        assert 42 not in headers

    def test_delete_removes_every_value(self) -> None:
        headers = Headers([("A", "1"), ("b", "2"), ("a", "3")])
        del headers["a"]
        assert headers.raw_items() == [("b", "2")]
        del headers["missing"]  # no error
        assert len(headers) == 1

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("X-A", "v\r\nInjected: 1"),
            ("X-A", "v\n"),
            ("X-A", "v\r"),
            ("X\r\nB", "v"),
            ("X:B", "v"),
        ],
    )
    def test_rejects_header_injection(self, name: str, value: str) -> None:
        headers = Headers()
        with pytest.raises(ValueError):
            headers[name] = value
        assert len(headers) == 0

    def test_update_from_mapping_iterable_and_headers(self) -> None:
        headers = Headers({"A": "1"})
        headers.update([("B", "2")])
        headers.update(Headers([("a", "3")]))
        assert headers.raw_items() == [("A", "1"), ("B", "2"), ("a", "3")]

    def test_copy_is_independent(self) -> None:
        headers = Headers([("A", "1")])
        copy = headers.copy()
        copy["B"] = "2"
        assert headers.raw_items() == [("A", "1")]
        assert copy.raw_items() == [("A", "1"), ("B", "2")]

    def test_equality_ignores_name_case(self) -> None:
        assert Headers([("Host", "x")]) == Headers([("host", "x")])
        assert Headers([("Host", "x")]) != Headers([("Host", "y")])
        assert Headers() != {"Host": "x"}

    def test_str_is_the_wire_format(self) -> None:
        headers = Headers([("Host", "example.com"), ("Upgrade", "websocket")])
        assert str(headers) == "Host: example.com\r\nUpgrade: websocket\r\n\r\n"
        assert str(Headers()) == "\r\n"

    def test_repr(self) -> None:
        assert repr(Headers([("A", "1")])) == "Headers([('A', '1')])"


class TestRequest:
    def test_defaults_and_host(self) -> None:
        request = Request("/chat", Headers([("Host", "example.com:8080")]))
        assert request.method == "GET"
        assert request.http_version == "1.1"
        assert request.host == "example.com:8080"
        assert Request("/", Headers()).host is None


class TestResponse:
    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (101, "Switching Protocols"),
            (403, "Forbidden"),
            (426, "Upgrade Required"),
            (431, "Request Header Fields Too Large"),
            (599, ""),
        ],
    )
    def test_default_reason(self, status: int, reason: str) -> None:
        assert Response(status).reason == reason

    def test_explicit_reason_kept(self) -> None:
        assert Response(500, reason="Oops").reason == "Oops"

    def test_defaults(self) -> None:
        response = Response(200)
        assert response.body == b""
        assert len(response.headers) == 0
        # Each response has its own headers.
        response.headers["A"] = "1"
        assert len(Response(200).headers) == 0

    def test_text(self) -> None:
        response = Response.text(401, "log in first\n", {"WWW-Authenticate": "Basic"})
        assert response.status == 401
        assert response.reason == "Unauthorized"
        assert response.body == b"log in first\n"
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["WWW-Authenticate"] == "Basic"

    def test_text_default_body(self) -> None:
        assert Response.text(404).body == b"404 Not Found\n"
        assert Response.text(599).body == b"599\n"

    def test_text_utf8_and_content_type_override(self) -> None:
        response = Response.text(200, "héllo", [("content-type", "text/html")])
        assert response.body == "héllo".encode()
        assert response.headers.get_all("Content-Type") == ["text/html"]
