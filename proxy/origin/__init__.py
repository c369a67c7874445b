"""The origin side: one interface (`Upstream`, `OriginResponse`), one error table, two clients behind it."""

from proxy.origin.errors import CLIENT_BODY_CAUSE, RequestBodyBroken, UpstreamError
from proxy.origin.interim import InterimSink
from proxy.origin.upstream import OriginResponse, Upstream

__all__ = [
    "CLIENT_BODY_CAUSE",
    "InterimSink",
    "OriginResponse",
    "RequestBodyBroken",
    "Upstream",
    "UpstreamError",
]
