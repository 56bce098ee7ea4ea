"""The threading layer: WebSocket server and client with blocking calls, no event loop.

``from tether.sync import connect, serve`` gives the same options and the same
connection API as :mod:`tether`'s asyncio layer, over the same sans-I/O core; see
``docs/sync.md``.
"""

from .client import ClientConnection, connect, unix_connect
from .connection import Connection, PongWaiter
from .server import Server, ServerConnection, serve, unix_serve

__all__ = [
    "ClientConnection",
    "Connection",
    "PongWaiter",
    "Server",
    "ServerConnection",
    "connect",
    "serve",
    "unix_connect",
    "unix_serve",
]
