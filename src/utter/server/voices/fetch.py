"""Fetch reference audio from a client-given URL without becoming a proxy into private networks.

``ref_audio_url`` makes the server open a URL on a client's behalf, the classic SSRF hole: a URL
naming 169.254.169.254 (cloud metadata), 127.0.0.1 (the server itself) or 10.x (the internal
network). So: only http(s); the host name is resolved first and *every* address it resolves to
must be public; the connection then goes to that checked address (with the original Host header
and TLS name), so a second DNS answer cannot swap in a private one; redirects are followed by
hand and checked the same way; the body is capped in size and the whole fetch in time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit

import httpx

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(ValueError):
    """The URL cannot or may not be fetched; the message is for the client."""


# IPv6 ranges whose last 32 bits are an IPv4 address the packets end up at.
_LOW32_EMBEDDING = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local use
    )
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for: mapped (``::ffff:a.b.c.d`` in any
    spelling), compatible, translated, NAT64, 6to4 (``2002:AABB:CCDD::``), Teredo (server and
    client). Empty for a plain IPv6 address."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if any(ip in net for net in _LOW32_EMBEDDING):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def is_public(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses (no loopback, private, link-local, CGNAT...).

    An IPv6 address that embeds an IPv4 one is judged by the IPv4 inside it (``::ffff:127.0.0.1``,
    ``64:ff9b::a9fe:a9fe`` or ``2002:7f00:1::`` reach 127.0.0.1 or 169.254.169.254 through the
    mapping, NAT64 or 6to4), and must itself be routable unless it is the mapped form."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner:
            routable = ip.ipv4_mapped is not None or (ip.is_global and not ip.is_multicast)
            return routable and all(v4.is_global and not v4.is_multicast for v4 in inner)
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; FetchError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"ref_audio_url is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"ref_audio_url must be an http(s) URL, not {scheme or 'a relative'}: URL.")
    if not parts.hostname:
        raise FetchError("ref_audio_url has no host name.")
    if parts.username or parts.password:
        raise FetchError("ref_audio_url must not contain credentials.")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"The host of ref_audio_url ({host}) cannot be resolved.") from exc
    addrs = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 zone id
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        raise FetchError(f"The host of ref_audio_url ({host}) has no address.")
    return addrs


async def check_url(url: str, allow_private: bool = False) -> tuple[str, IPAddress]:
    """Validate ``url`` and pick the address to connect to; FetchError when it is not allowed."""
    _scheme, host, port = _split(url)
    addrs = await resolve(host, port)
    if not allow_private:
        bad = [str(ip) for ip in addrs if not is_public(ip)]
        if bad:
            raise FetchError(
                f"ref_audio_url points to a non-public address ({', '.join(bad)}): loopback, private, "
                "link-local and reserved addresses are refused."
            )
    return host, addrs[0]


async def _get(url: str, max_bytes: int, allow_private: bool, timeout_s: float) -> bytes:
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            host, ip = await check_url(url, allow_private)
            parts = urlsplit(url)
            literal = f"[{ip}]" if ip.version == 6 else str(ip)
            pinned = parts._replace(netloc=f"{literal}:{parts.port}" if parts.port else literal).geturl()
            # TLS must still check the certificate against the name, not the pinned address.
            sni = {} if _is_ip(host) else {"sni_hostname": host}
            request = client.build_request("GET", pinned, headers={"Host": parts.netloc}, extensions=sni)
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FetchError(f"ref_audio_url answered HTTP {response.status_code}.")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"ref_audio_url is larger than the {max_bytes // 1024} KiB allowed.")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"ref_audio_url is larger than the {max_bytes // 1024} KiB allowed.")
                return bytes(body)
            finally:
                await response.aclose()
    raise FetchError(f"ref_audio_url redirected more than {MAX_REDIRECTS} times.")


async def fetch_audio(url: str, max_bytes: int, timeout_s: float, allow_private: bool = False) -> bytes:
    """The bytes at ``url`` (checked as the module docstring says); FetchError on any failure."""
    try:
        return await asyncio.wait_for(_get(url, max_bytes, allow_private, timeout_s), timeout_s)
    except asyncio.TimeoutError as exc:
        raise FetchError(f"ref_audio_url did not answer within {timeout_s:g} s.") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"ref_audio_url cannot be fetched: {type(exc).__name__}.") from exc
