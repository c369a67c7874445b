"""The origin side: one interface (`Upstream`, `OriginResponse`), one error table, two clients behind it."""

from proxy.origin.errors import UpstreamError
from proxy.origin.upstream import OriginResponse, Upstream

__all__ = ["OriginResponse", "Upstream", "UpstreamError"]
