"""RFC 7692: the permessage-deflate extension, negotiation and codec, sans I/O.

Negotiation: a client sends an offer (:func:`client_offer`) and checks the server's
answer (:func:`client_accept`); a server picks the first offer it can honour
(:func:`server_accept`) and declines the others. Both sides end with a
:class:`PerMessageDeflate` codec that the core :class:`~tether.protocol.Protocol` calls
for each message with RSV1 set.

Safety: decompression is bounded. The core passes the bytes of ``max_size`` still
allowed for the message, and :meth:`PerMessageDeflate.decode` asks zlib for at most
one byte more than that, so a small frame that would inflate to gigabytes costs
neither the memory nor the time of inflating it: it fails with 1009 at once.

Memory: zlib objects are created on first use, so a connection that has not yet
exchanged a compressed message holds none; with context takeover (the default) they
then stay for the connection's life (about 29 KiB with the default windows, 12 bits
for the server's compressor and 11 for the client's, and mem_level 3, measured in
bench/), and with ``*_no_context_takeover`` they are dropped
after each message. A whole message of :data:`LARGE_MESSAGE` bytes or more is
compressed by a compressor of its own with a larger hash table, freed right after.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..exceptions import NegotiationError, PayloadTooBig, ProtocolError

__all__ = [
    "Deflate",
    "PerMessageDeflate",
    "ServerNegotiator",
    "client_accept",
    "client_offer",
    "compression_settings",
    "parse_extension_header",
    "server_accept",
]

_TAIL = b"\x00\x00\xff\xff"
#: Whole messages of at least this many bytes get a compressor of their own (see
#: :meth:`PerMessageDeflate.encode`).
LARGE_MESSAGE = 16 * 1024
# The mem_level of that compressor: a hash table large enough for long inputs
# (mem_level 3 collides a lot past a few KiB), for the time of one message.
_LARGE_MEM_LEVEL = 7
_PARAMS = frozenset((
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
))


@dataclass(frozen=True, slots=True)
class Deflate:
    """Settings of permessage-deflate; pass as ``compression=Deflate(...)``.

    - ``server_max_window_bits`` / ``client_max_window_bits`` (9-15): the LZ77 window
      each side compresses with; memory of a compressor is about ``2 ** (bits + 2)``
      bytes plus ``2 ** (mem_level + 9)``. A server asks the client for
      ``client_max_window_bits`` when the client offers it.
    - ``server_no_context_takeover`` / ``client_no_context_takeover``: reset the
      compressor after each message (less memory between messages, worse ratio).
    - ``compress_level`` (0-9) and ``mem_level`` (1-9): zlib's. The defaults, level 4
      and mem_level 3, keep a connection's compression state near 31 KiB and compress
      as fast as level 6 with mem_level 5 (websockets' defaults, 12 KiB more per
      connection) for an output about 10% larger; level 6 or 9 compress more, slower.
    - ``threshold``: messages shorter than this many bytes are sent uncompressed.
    """

    server_max_window_bits: int = 12
    client_max_window_bits: int = 11
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    compress_level: int = 4
    mem_level: int = 3
    threshold: int = 128

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if not 9 <= getattr(self, name) <= 15:
                raise ValueError(f"{name} must be between 9 and 15")
        if not 0 <= self.compress_level <= 9 and self.compress_level != -1:
            raise ValueError("compress_level must be between 0 and 9")
        if not 1 <= self.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if self.threshold < 0:
            raise ValueError("threshold must be 0 or more")


class PerMessageDeflate:
    """The per-message codec once negotiated (one per connection)."""

    __slots__ = (
        "_decoder",
        "_encoder",
        "_midway",
        "compress_level",
        "local_max_window_bits",
        "local_no_context_takeover",
        "mem_level",
        "remote_max_window_bits",
        "remote_no_context_takeover",
        "threshold",
    )

    def __init__(
        self,
        *,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        compress_level: int = 4,
        mem_level: int = 3,
        threshold: int = 0,
    ) -> None:
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_max_window_bits = remote_max_window_bits
        self.local_max_window_bits = local_max_window_bits
        # zlib cannot compress with an 8-bit window. When the peer asks for one, send
        # stored blocks (level 0): no back-references, so any window decodes them.
        self.compress_level = compress_level if local_max_window_bits > 8 else 0
        self.mem_level = mem_level
        self.threshold = threshold
        self._decoder: zlib._Decompress | None = None
        self._encoder: zlib._Compress | None = None
        self._midway = False  # between the pieces of a message sent in fragments

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(local_bits={self.local_max_window_bits}, "
            f"remote_bits={self.remote_max_window_bits}, "
            f"local_no_ctx={self.local_no_context_takeover}, "
            f"remote_no_ctx={self.remote_no_context_takeover})"
        )

    def should_compress(self, size: int) -> bool:
        """Tell whether a whole message of ``size`` bytes is worth compressing."""
        return size >= self.threshold

    def decode(self, data: bytes, final: bool, max_length: int | None) -> bytes:
        """Inflate a piece of a message; ``final`` for its last piece.

        Raises :class:`PayloadTooBig` as soon as more than ``max_length`` bytes would
        come out, :class:`ProtocolError` (1007) for a corrupt stream.
        """
        decoder = self._decoder
        if decoder is None:
            # An 8-bit window is inflated with 9 bits: zlib rejects 8 for raw inflate
            # on some versions and a larger window decodes the same stream.
            decoder = self._decoder = zlib.decompressobj(
                wbits=-max(self.remote_max_window_bits, 9)
            )
        if final:
            data += _TAIL
        try:
            if max_length is None:
                out = decoder.decompress(data)
            else:
                out = decoder.decompress(data, max_length + 1)
                if len(out) > max_length:
                    self._decoder = None
                    raise PayloadTooBig(
                        "decompressed message exceeds max_size; "
                        "raise max_size or send smaller messages"
                    )
        except zlib.error as exc:
            self._decoder = None
            raise ProtocolError(f"invalid compressed data: {exc}", 1007) from None
        if decoder.eof or (final and self.remote_no_context_takeover):
            # RFC 7692 7.2.3.4: a sender may end a message with a final (BFINAL) block;
            # the next message then starts a new stream.
            self._decoder = None
        return out

    def encode(self, data: bytes, final: bool) -> bytes:
        """Deflate a piece of a message; ``final`` for its last piece.

        A whole message of :data:`LARGE_MESSAGE` bytes or more is compressed by a
        compressor of its own, with the same level and window but a larger hash table
        (mem_level 7), freed right after: a quarter less CPU than the connection's
        small compressor, for an output as small (the earlier messages' context helps
        little against the message's own). The connection's compressor then starts
        afresh at the next message, since the peer's window now holds this one
        (RFC 7692 7.2.3.3 lets a sender stop referring to earlier messages at will).
        """
        bits = -max(self.local_max_window_bits, 9)
        encoder: zlib._Compress | None
        if final and not self._midway and len(data) >= LARGE_MESSAGE:
            encoder = zlib.compressobj(
                self.compress_level, zlib.DEFLATED, bits, max(self.mem_level, _LARGE_MEM_LEVEL)
            )
            self._encoder = None
        else:
            encoder = self._encoder
            if encoder is None:
                encoder = self._encoder = zlib.compressobj(
                    self.compress_level, zlib.DEFLATED, bits, self.mem_level
                )
            self._midway = not final
        out = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
        if final:
            # RFC 7692 7.2.1: remove the 4 octets 0x00 0x00 0xff 0xff at the tail.
            if out.endswith(_TAIL):
                out = out[:-4]
            if self.local_no_context_takeover:
                self._encoder = None
        return out


# ------------------------------------------------------------------ negotiation


Params = list[tuple[str, str | None]]


def parse_extension_header(values: list[str]) -> list[tuple[str, Params]]:
    """Parse Sec-WebSocket-Extensions values into ``[(name, [(param, value)])]``.

    Raises :class:`NegotiationError` on a malformed header.
    """
    result: list[tuple[str, Params]] = []
    for value in values:
        for item in _split_outside_quotes(value, ","):
            if not item.strip():
                continue
            parts = _split_outside_quotes(item, ";")
            name = parts[0].strip()
            if not name or not _is_token(name):
                raise NegotiationError(f"invalid extension in Sec-WebSocket-Extensions: {item!r}")
            params: Params = []
            for part in parts[1:]:
                key, eq, val = part.partition("=")
                key = key.strip()
                if not _is_token(key):
                    raise NegotiationError(f"invalid extension parameter: {part!r}")
                pval: str | None = None
                if eq:
                    pval = val.strip()
                    if len(pval) >= 2 and pval[0] == pval[-1] == '"':
                        pval = pval[1:-1]
                    if not _is_token(pval):
                        raise NegotiationError(f"invalid extension parameter value: {part!r}")
                params.append((key, pval))
            result.append((name, params))
    return result


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def _window_bits(name: str, value: str | None, allow_none: bool) -> int | None:
    if value is None:
        if allow_none:
            return None
        raise NegotiationError(f"{name} requires a value")
    if not (value.isdigit() and len(value) <= 2 and value[0] != "0" and 8 <= int(value) <= 15):
        raise NegotiationError(f"invalid {name}={value}: must be 8 to 15")
    return int(value)


def _params_dict(params: Params) -> dict[str, str | None]:
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in _PARAMS:
            raise NegotiationError(f"unknown permessage-deflate parameter {key}")
        if key in seen:
            raise NegotiationError(f"duplicate permessage-deflate parameter {key}")
        if key.endswith("no_context_takeover") and value is not None:
            raise NegotiationError(f"{key} takes no value")
        seen[key] = value
    return seen


def server_accept(
    offers: list[str], settings: Deflate
) -> tuple[str | None, PerMessageDeflate | None]:
    """Choose the first permessage-deflate offer the server can honour.

    Returns the Sec-WebSocket-Extensions response value and the codec, or
    ``(None, None)`` when every offer is declined (the connection goes on without
    compression; RFC 7692 5: declining is always allowed).
    """
    try:
        extensions = parse_extension_header(offers)
    except NegotiationError:
        return None, None
    for name, params in extensions:
        if name != "permessage-deflate":
            continue
        try:
            accepted = _server_accept_one(params, settings)
        except NegotiationError:
            continue
        if accepted is not None:
            return accepted
    return None, None


def _server_accept_one(params: Params, s: Deflate) -> tuple[str, PerMessageDeflate] | None:
    p = _params_dict(params)
    response = ["permessage-deflate"]
    server_nct = s.server_no_context_takeover or "server_no_context_takeover" in p
    client_nct = s.client_no_context_takeover or "client_no_context_takeover" in p
    if server_nct:
        response.append("server_no_context_takeover")
    if client_nct:
        response.append("client_no_context_takeover")
    server_bits = s.server_max_window_bits
    if "server_max_window_bits" in p:
        requested = _window_bits("server_max_window_bits", p["server_max_window_bits"], False)
        assert requested is not None
        server_bits = min(server_bits, requested)
    if server_bits != 15:
        response.append(f"server_max_window_bits={server_bits}")
    client_bits = 15
    if "client_max_window_bits" in p:
        offered = _window_bits("client_max_window_bits", p["client_max_window_bits"], True)
        client_bits = s.client_max_window_bits if offered is None else min(
            offered, s.client_max_window_bits
        )
        if client_bits != 15 or offered is not None:
            response.append(f"client_max_window_bits={client_bits}")
    codec = PerMessageDeflate(
        remote_no_context_takeover=client_nct,
        local_no_context_takeover=server_nct,
        remote_max_window_bits=client_bits,
        local_max_window_bits=server_bits,
        compress_level=s.compress_level if server_bits > 8 else 0,
        mem_level=s.mem_level,
        threshold=s.threshold,
    )
    return "; ".join(response), codec


def client_offer(settings: Deflate) -> str:
    """The client's Sec-WebSocket-Extensions offer.

    It asks for the server's window of ``settings`` (12 bits by default, to keep
    memory low) and offers ``client_max_window_bits`` without a value, as browsers
    do; the client then compresses with at most its own ``client_max_window_bits``.
    """
    offer = ["permessage-deflate"]
    if settings.server_no_context_takeover:
        offer.append("server_no_context_takeover")
    if settings.client_no_context_takeover:
        offer.append("client_no_context_takeover")
    if settings.server_max_window_bits != 15:
        offer.append(f"server_max_window_bits={settings.server_max_window_bits}")
    # Without a value, as browsers send it: the server may then set the client's
    # window, and the client compresses with the smaller of that and its own setting
    # (a smaller window than allowed is always valid).
    offer.append("client_max_window_bits")
    return "; ".join(offer)


def client_accept(values: list[str], settings: Deflate | None) -> PerMessageDeflate | None:
    """Check the server's Sec-WebSocket-Extensions answer against the client's offer.

    Raises :class:`NegotiationError` when it does not match what was offered.
    """
    if not values:
        return None
    extensions = parse_extension_header(values)
    if settings is None:
        raise NegotiationError(
            f"server accepted extensions the client did not offer: {', '.join(values)}"
        )
    if len(extensions) != 1 or extensions[0][0] != "permessage-deflate":
        names = ", ".join(name for name, _ in extensions)
        raise NegotiationError(f"server accepted extensions the client did not offer: {names}")
    p = _params_dict(extensions[0][1])
    server_nct = "server_no_context_takeover" in p
    if settings.server_no_context_takeover and not server_nct:
        raise NegotiationError("server did not accept server_no_context_takeover")
    client_nct = settings.client_no_context_takeover or "client_no_context_takeover" in p
    server_bits = 15
    if "server_max_window_bits" in p:
        bits = _window_bits("server_max_window_bits", p["server_max_window_bits"], False)
        assert bits is not None
        if bits > settings.server_max_window_bits:
            raise NegotiationError(
                f"server_max_window_bits={bits} is more than offered "
                f"({settings.server_max_window_bits})"
            )
        server_bits = bits
    elif settings.server_max_window_bits != 15:
        raise NegotiationError("server did not accept server_max_window_bits")
    client_bits = settings.client_max_window_bits
    if "client_max_window_bits" in p:
        bits = _window_bits("client_max_window_bits", p["client_max_window_bits"], False)
        assert bits is not None
        client_bits = min(bits, client_bits)
    return PerMessageDeflate(
        remote_no_context_takeover=server_nct,
        local_no_context_takeover=client_nct,
        remote_max_window_bits=server_bits,
        local_max_window_bits=client_bits,
        compress_level=settings.compress_level if client_bits > 8 else 0,
        mem_level=settings.mem_level,
        threshold=settings.threshold,
    )


def compression_settings(
    compression: str | Deflate | None, *, client: bool = False
) -> Deflate | None:
    """Turn the ``compression`` option into settings: ``"deflate"``, a
    :class:`Deflate`, or ``None`` (off).

    For a client, ``"deflate"`` makes the offer browsers send,
    ``permessage-deflate; client_max_window_bits``: the server keeps its own window.
    """
    if compression is None:
        return None
    if isinstance(compression, Deflate):
        return compression
    if compression == "deflate":
        return Deflate(server_max_window_bits=15) if client else Deflate()
    raise ValueError(
        f"unsupported compression {compression!r}: use \"deflate\", a tether.Deflate(...) "
        "or None"
    )


class ServerNegotiator:
    """Callable for :class:`~tether.protocol.ServerHandshake`: offers -> (answer, codec)."""

    __slots__ = ("settings",)

    def __init__(self, settings: Deflate) -> None:
        self.settings = settings

    def __call__(self, offers: list[str]) -> tuple[str | None, object]:
        return server_accept(offers, self.settings)
