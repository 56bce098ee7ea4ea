"""Build the optional C accelerator; tether installs and works without it."""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("TETHER_NO_SPEEDUPS") != "1":
    ext_modules.append(
        Extension("tether._speedups", ["src/tether/_speedups.c"], optional=True)
    )

setup(ext_modules=ext_modules)
