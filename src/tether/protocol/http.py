"""HTTP values of the opening handshake: :class:`Headers`, :class:`Request`, :class:`Response`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["Headers", "HeadersLike", "Request", "Response"]


class Headers:
    """Case-insensitive HTTP headers that keep order, case and repeated names.

    ``headers["Name"]`` returns the value, or the values joined with ``", "`` when the
    header is repeated; :meth:`get_all` returns them as a list.
    """

    # The pairs live in ``_list``, or, to save memory on connections that keep their
    # handshake's headers for their whole life, in ``_block``: one string
    # "Name: value\r\nName: value" (names hold no ":", values no CR or LF), split back
    # into pairs on first use.
    __slots__ = ("_block", "_list")

    def __init__(self, items: HeadersLike | None = None) -> None:
        self._list: list[tuple[str, str]] | None = []
        self._block = ""
        if items is not None:
            self.update(items)

    @property
    def _items(self) -> list[tuple[str, str]]:
        items = self._list
        if items is None:
            block = self._block
            items = self._list = [
                (name, value)
                for name, _, value in (line.partition(": ") for line in block.split("\r\n"))
            ] if block else []
            self._block = ""
        return items

    @_items.setter
    def _items(self, items: list[tuple[str, str]]) -> None:
        self._list = items
        self._block = ""

    def _compact(self) -> None:
        """Keep the pairs as one string until they are used again (saves memory)."""
        items = self._list
        if items is not None:
            self._block = "\r\n".join(f"{name}: {value}" for name, value in items)
            self._list = None

    def _compact_from(self, block: str) -> None:
        """Take ``block``, the compact form of the pairs already built by the caller
        (the lines of a head just serialised), instead of joining them again."""
        self._block = block
        self._list = None

    def update(self, items: HeadersLike) -> None:
        """Append headers from a mapping or an iterable of ``(name, value)`` pairs."""
        pairs = items.raw_items() if isinstance(items, Headers) else (
            items.items() if isinstance(items, Mapping) else items
        )
        for name, value in pairs:
            self[name] = value

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name: str, value: str) -> None:
        """Append a header (an existing header of that name is kept)."""
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        self._items.append((name, value))

    def __delitem__(self, name: str) -> None:
        lname = name.lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != lname]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lname = name.lower()
        return any(n.lower() == lname for n, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in self._items:
            if name.lower() not in seen:
                seen.add(name.lower())
                yield name

    def __len__(self) -> int:
        return len({n.lower() for n, _ in self._items})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return sorted((n.lower(), v) for n, v in self._items) == sorted(
            (n.lower(), v) for n, v in other._items
        )

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def __str__(self) -> str:
        return "".join(f"{n}: {v}\r\n" for n, v in self._items) + "\r\n"

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the header's value, or ``default`` when absent."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        """Return every value of a header, in order."""
        lname = name.lower()
        return [v for n, v in self._items if n.lower() == lname]

    def raw_items(self) -> list[tuple[str, str]]:
        """Return the ``(name, value)`` pairs in order, with repeats."""
        return list(self._items)

    def items(self) -> list[tuple[str, str]]:
        """The same as :meth:`raw_items`."""
        return list(self._items)

    def copy(self) -> Headers:
        """Return a copy."""
        return Headers(self._items)


HeadersLike = Headers | Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(slots=True)
class Request:
    """The client's opening handshake request (or any HTTP request on the port)."""

    path: str
    headers: Headers
    method: str = "GET"
    http_version: str = "1.1"

    @property
    def host(self) -> str | None:
        """The Host header."""
        return self.headers.get("Host")


@dataclass(slots=True)
class Response:
    """An HTTP response: the server's 101 Switching Protocols, or any other answer.

    Build one with :func:`Response.text` or ``connection.respond(status, text)``.
    """

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.reason:
            try:
                self.reason = HTTPStatus(self.status).phrase
            except ValueError:
                self.reason = ""

    @classmethod
    def text(cls, status: int, text: str = "", headers: HeadersLike | None = None) -> Response:
        """A plain-text response; the body defaults to the status phrase."""
        hdrs = Headers(headers)
        if not text:
            try:
                text = f"{status} {HTTPStatus(status).phrase}\n"
            except ValueError:
                text = f"{status}\n"
        if "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "text/plain; charset=utf-8"
        return cls(status, hdrs, text.encode("utf-8"))
