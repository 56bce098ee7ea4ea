from collections.abc import Callable, Sequence
from typing import Any

def apply_mask(
    data: bytes | bytearray | memoryview, mask: bytes, prefix: bytes = b"", /
) -> bytes: ...
def unmask_join(parts: Sequence[bytes | bytearray | memoryview], mask: bytes, /) -> bytes: ...
def parse_simple(
    data: bytes, pos: int, masked: bool, max_size: int, append: Callable[[Any], None], /
) -> int: ...
