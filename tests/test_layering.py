"""The sans-I/O core must not depend on I/O: walk its imports with ast.

Every module under ``src/tether/protocol/`` is parsed (not imported): its ``import``
and ``from ... import`` statements, at any depth (including inside functions), and
``__import__("x")`` / ``importlib.import_module("x")`` calls with a literal name, must
not reach asyncio, socket, ssl, selectors, threading, time or logging, nor the
driver layers of tether (asyncio, sync, pubsub). Modules of tether the core imports
(``exceptions``) are checked the same way, transitively.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
CORE = SRC / "tether" / "protocol"
FORBIDDEN = frozenset(("asyncio", "socket", "ssl", "selectors", "threading", "time", "logging"))
DRIVERS = frozenset(("tether.asyncio", "tether.sync", "tether.pubsub"))


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(module: str | None, level: int, importer: Path, src: Path) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        assert module is not None
        return module
    package = module_name(importer, src).split(".")
    if not is_package(importer):
        package.pop()
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


def imported_names(path: Path, src: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, with the line: ``from a import b`` gives a and a.b."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level, path, src)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if (
                name in ("__import__", "import_module")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((node.lineno, node.args[0].value))
    return found


def tether_module_path(name: str, src: Path) -> Path | None:
    """The source file of a tether module (``None`` for a name that is not a module)."""
    relative = Path(*name.split("."))
    for candidate in (src / relative / "__init__.py", src / relative.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def violations(path: Path, src: Path = SRC) -> list[str]:
    """Forbidden imports reached from ``path``, following tether's own modules."""
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for lineno, name in imported_names(current, src):
            where = f"{current.relative_to(src).as_posix()}:{lineno}"
            if name.split(".")[0] in FORBIDDEN:
                problems.append(f"{where} imports {name}")
            elif any(name == d or name.startswith(d + ".") for d in DRIVERS):
                problems.append(f"{where} imports the driver layer {name}")
            elif name.startswith("tether."):
                target = tether_module_path(name, src)
                # tether/__init__.py pulls in the drivers; the core must name modules.
                if target is not None and target != src / "tether" / "__init__.py":
                    todo.append(target)
            elif name == "tether":
                problems.append(f"{where} imports the tether package (and so its drivers)")
    return problems


CORE_MODULES = sorted(CORE.rglob("*.py"))


def test_core_modules_found() -> None:
    names = {p.name for p in CORE_MODULES}
    assert {"__init__.py", "frames.py", "connection.py", "handshake.py", "deflate.py"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=[p.name for p in CORE_MODULES])
def test_core_module_does_no_io(path: Path) -> None:
    assert violations(path) == []


# The checker itself must be able to fail.


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio\n",
        "import asyncio.events\n",
        "from asyncio import Protocol\n",
        "import time as _t\n",
        "def f():\n    import threading\n",
        "from logging import getLogger\n",
        "import os, socket\n",
        "try:\n    import ssl\nexcept ImportError:\n    pass\n",
        "import selectors\n",
        "__import__('socket')\n",
        "import importlib\nimportlib.import_module('asyncio')\n",
        "from .. import asyncio\n",
        "from ..asyncio.connection import Connection\n",
        "from .. import sync\n",
        "import tether\n",
        "from .frames import Frame\nfrom ..exceptions import X\nimport logging\n",
    ],
)
def test_checker_catches(tmp_path: Path, source: str) -> None:
    fake_src = tmp_path / "src"
    package = fake_src / "tether" / "protocol"
    package.mkdir(parents=True)
    (fake_src / "tether" / "__init__.py").write_text("")
    (fake_src / "tether" / "exceptions.py").write_text("")
    (package / "frames.py").write_text("")
    module = package / "bad.py"
    module.write_text(source)
    assert violations(module, fake_src) != []


@pytest.mark.parametrize(
    "source",
    [
        "import os\nimport struct\nimport zlib\n",
        "from .frames import Frame\n",
        "from ..exceptions import ProtocolError\n",
        "import h11\nimport hashlib\nimport base64\n",
        "from typing import TYPE_CHECKING\n",
        "timeout = 3  # the word time in a name is fine\n",
    ],
)
def test_checker_accepts(tmp_path: Path, source: str) -> None:
    fake_src = tmp_path / "src"
    package = fake_src / "tether" / "protocol"
    package.mkdir(parents=True)
    (fake_src / "tether" / "__init__.py").write_text("import asyncio\n")
    (fake_src / "tether" / "exceptions.py").write_text("from typing import Any\n")
    (package / "frames.py").write_text("import struct\n")
    module = package / "ok.py"
    module.write_text(source)
    assert violations(module, fake_src) == []


def test_transitive_tether_imports_are_followed(tmp_path: Path) -> None:
    fake_src = tmp_path / "src"
    package = fake_src / "tether" / "protocol"
    package.mkdir(parents=True)
    (fake_src / "tether" / "__init__.py").write_text("")
    (fake_src / "tether" / "exceptions.py").write_text("import logging\n")
    module = package / "uses_exceptions.py"
    module.write_text("from ..exceptions import ProtocolError\n")
    assert violations(module, fake_src) == ["tether/exceptions.py:1 imports logging"]
