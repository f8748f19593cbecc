"""Where media may flow: local ICE host addresses and the remote candidates that are accepted.

aioice gathers host candidates on every interface except loopback, so a server bound to 127.0.0.1
would still offer (and use) its LAN addresses. ``restrict_host_addresses`` swaps aioice's address
lookup for a fixed list while the server runs, and ``filter_candidates`` drops remote candidates on
other addresses, so that ``serve --host 127.0.0.1`` never moves a packet off loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator, Sequence

import aioice.ice

_restriction_lock = threading.Lock()


def host_addresses_for(bind_host: str) -> list[str] | None:
    """The local addresses that should carry media for a server bound to ``bind_host``.

    None means every interface (aioice's own choice): a wildcard bind serves other machines.
    """
    if bind_host in ("", "0.0.0.0", "::"):
        return None
    if bind_host == "localhost":
        return ["127.0.0.1"]
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        # A host name: media goes where it resolves to, which aioice's default covers.
        return None
    return [str(address)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def restrict_host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """Make every ICE agent in this process gather host candidates only on ``addresses``.

    aioice reads a module-level function, so this is process-wide; it nests (the innermost wins)
    and restores what it replaced on exit.
    """
    if addresses is None:
        yield
        return
    allowed = list(addresses)

    def fixed_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            address
            for address in allowed
            if (use_ipv4 and ipaddress.ip_address(address).version == 4)
            or (use_ipv6 and ipaddress.ip_address(address).version == 6)
        ]

    with _restriction_lock:
        previous = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = fixed_addresses
    try:
        yield
    finally:
        with _restriction_lock:
            aioice.ice.get_host_addresses = previous


def filter_candidates(sdp: str, allowed_addresses: Sequence[str] | None) -> str:
    """The SDP without ``a=candidate`` lines whose address is not allowed (None allows all).

    Dropping mDNS (``*.local``) candidates here also keeps aioice from sending multicast queries.
    """
    if allowed_addresses is None:
        return sdp
    allowed = set(allowed_addresses)
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
            if len(fields) < 6 or fields[4] not in allowed:
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"
