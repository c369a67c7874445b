"""A real aiohttp origin server whose routes are named after HTTP caching behaviours.

It backs the cache's demos, functional tests and benchmarks: every route sets the caching
headers its name promises, counts the requests that reach it and logs them, so a test can
assert exactly what the proxy forwarded.  Build it in-process with
:func:`origin_stub.app.create_app` or run it with ``python -m origin_stub --listen HOST:PORT``.
"""

from origin_stub.app import create_app

__all__ = ["create_app"]
