"""Storage tiers: the Storage protocol, the memory (L1) and disk (L2) tiers, and their tiered combination."""

from proxy.storage.base import EVICTION_POLICIES, EvictionPolicy, Storage, TierStats
from proxy.storage.disk import DiskStorage
from proxy.storage.memory import MemoryStorage
from proxy.storage.tiered import TieredStorage, TierName

__all__ = [
    "EVICTION_POLICIES",
    "DiskStorage",
    "EvictionPolicy",
    "MemoryStorage",
    "Storage",
    "TierName",
    "TierStats",
    "TieredStorage",
]
