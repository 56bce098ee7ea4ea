"""Session-wide test settings."""

from __future__ import annotations

import os

# tether's clients honour the environment's proxy settings, as curl does (loopback is
# not bypassed unless no_proxy says so). The tests talk to servers on 127.0.0.1 and
# set proxies explicitly where they test them: a machine's own settings must not leak in.
for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)
