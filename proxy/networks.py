"""Whether a client's address is in a configured list of networks.

What must live here: the one reading of a network list (`admin.purge_networks`,
`policy.invalidate_on_unsafe.networks`) against a client's TCP peer address,
so the PURGE method and the invalidation rule agree on what "from 10.0.0.0/8"
means. An IPv4-mapped IPv6 address (::ffff:10.1.2.3, how a dual-stack socket
reports an IPv4 client) counts as its IPv4 address; an unknown or unparsable
address is in no network. The lists were validated with the config.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def _parsed(networks: tuple[str, ...]) -> tuple[Network, ...]:
    # A config holds a few lists; parsing each once keeps a request's check to a few comparisons.
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def ip_of(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in `text` (as a socket reports it, maybe with a %zone), IPv4-mapped ones as IPv4."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_in(remote: str | None, networks: tuple[str, ...]) -> bool:
    """Is `remote` (an IP address as the socket reports it, maybe with a %zone) in one of `networks`?"""
    address = ip_of(remote)
    return address is not None and any(address in net for net in _parsed(networks))
