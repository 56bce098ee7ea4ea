"""Memory of permessage-deflate per connection, for each setting.

    python bench/deflate_memory.py [--connections 2000] [--markdown]

For each setting, a fresh subprocess creates the codecs of ``--connections``
server-side connections (tether.protocol.deflate, as negotiated with a browser-like
offer), sends one message each way through every codec (1 KiB, then in a second run 64 KiB,
which touches every page of zlib's windows and hash tables: the steady state of a busy
connection), and reports the growth of the process's resident memory divided by the number
of connections. zlib allocates in C, out of tracemalloc's sight: RSS is the honest
measure. Figures are KiB per connection for compression alone (add the ~10 KiB of an
uncompressed tether connection, see bench/results/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SETTINGS: list[dict[str, int | bool]] = [
    {},
    {"server_max_window_bits": 15, "client_max_window_bits": 15, "mem_level": 8},
    {"server_max_window_bits": 15, "client_max_window_bits": 15},
    {"server_max_window_bits": 10, "client_max_window_bits": 10},
    {"server_max_window_bits": 9, "client_max_window_bits": 9, "mem_level": 1},
    {"mem_level": 8},
    {"mem_level": 5},
    {"mem_level": 1},
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
]

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
from tether.protocol.deflate import Deflate, client_accept, client_offer, server_accept

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

import random
settings = Deflate(**json.loads(sys.argv[1]))
n = int(sys.argv[2])
size = int(sys.argv[4])
rng = random.Random(1)
words = [b"alice", b"bob", b"text", b"hello", b"world", b"price", b"12345", b"{", b"}", b'"']
message = b" ".join(rng.choice(words) for _ in range(size))[:size]
client_settings = Deflate(server_max_window_bits=15, client_max_window_bits=15)
offer = client_offer(client_settings)
before = rss_kib()
codecs = []
for _ in range(n):
    answer, server = server_accept([offer], settings)
    client = client_accept([answer], client_settings)
    # One message each way: the server inflates the client's and deflates its reply.
    server.decode(client.encode(message, True), True, None)
    client.decode(server.encode(message, True), True, None)
    codecs.append(server)
    del client
after = rss_kib()
print(json.dumps({"kib_per_connection": (after - before) / n}))
"""


def measure(setting: dict[str, int | bool], n: int, size: int) -> float:
    src = str(Path(__file__).resolve().parent.parent / "src")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(setting), str(n), src, str(size)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return float(json.loads(out.stdout)["kib_per_connection"])


def describe(setting: dict[str, int | bool]) -> str:
    if not setting:
        return "defaults (server window 12 bits, client 11, mem_level 3, level 4)"
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    print(
        "| Deflate(...) setting | KiB/connection after a 1 KiB message "
        "| after a 64 KiB message |"
    )
    print("|---|---:|---:|")
    for setting in SETTINGS:
        small = measure(setting, args.connections, 1024)
        large = measure(setting, max(args.connections // 4, 100), 65536)
        print(f"| {describe(setting)} | {small:.1f} | {large:.1f} |", flush=True)


if __name__ == "__main__":
    main()
