"""The origin side: one interface (`Upstream`, `OriginResponse`), one error table, two clients behind it."""

from proxy.origin.errors import UpstreamError
from proxy.origin.interim import InterimSink
from proxy.origin.upstream import OriginResponse, Upstream

__all__ = ["InterimSink", "OriginResponse", "Upstream", "UpstreamError"]
