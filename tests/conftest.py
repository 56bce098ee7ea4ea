"""Session-wide test settings."""

from __future__ import annotations

import os
import signal

# tether's clients honour the environment's proxy settings, as curl does (loopback is
# not bypassed unless no_proxy says so). The tests talk to servers on 127.0.0.1 and
# set proxies explicitly where they test them: a machine's own settings must not leak in.
for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
# across exec: under `cmd &` (a CI runner, nohup) the programs the tests start would
# ignore the Ctrl-C the Ctrl-C tests send them. Python then never installs its
# KeyboardInterrupt handler. Restore the default, so that children start with it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
