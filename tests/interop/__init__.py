"""Interoperability tests: tether against real peer libraries over real sockets."""
