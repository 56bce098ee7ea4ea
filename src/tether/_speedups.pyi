from collections.abc import Callable, Sequence
from typing import Any

def apply_mask(
    data: bytes | bytearray | memoryview, mask: bytes, prefix: bytes = b"", /
) -> bytes: ...
def unmask_join(parts: Sequence[bytes | bytearray | memoryview], mask: bytes, /) -> bytes: ...
def parse_simple(
    data: bytes | bytearray | memoryview,
    pos: int,
    masked: bool,
    max_size: int,
    append: Callable[[Any], None],
    end: int = ...,
    /,
) -> int: ...
def parse_head(
    head: bytes, response: bool, /
) -> tuple[Any, str, str, list[tuple[str, str]]] | None: ...
