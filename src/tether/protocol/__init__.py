"""The sans-I/O core: RFC 6455 and RFC 7692 as state machines, with no I/O at all.

Nothing in this package imports asyncio, socket, ssl, selectors, threading or reads a
clock: it is fed bytes and asked for events and bytes to write.
"""

from .connection import Ping, Pong, Protocol, Side, State
from .frames import Close, Frame
from .handshake import ClientHandshake, ServerHandshake
from .http import Headers, Request, Response

__all__ = [
    "ClientHandshake",
    "Close",
    "Frame",
    "Headers",
    "Ping",
    "Pong",
    "Protocol",
    "Request",
    "Response",
    "ServerHandshake",
    "Side",
    "State",
]
