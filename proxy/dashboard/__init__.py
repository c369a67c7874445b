"""The live dashboard: one static page (index.html beside this file) served by the admin API.

The page has no build step and loads nothing from elsewhere: its script polls the
admin API's `/stats` (and `/readyz`) and works out rates and latency percentiles
from two samples of the box's counters. It carries no data itself, so the admin
API serves it without a token; the page asks for the token when `/stats` wants one.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def page() -> bytes:
    """The dashboard's HTML (read once)."""
    return resources.files(__name__).joinpath("index.html").read_bytes()
