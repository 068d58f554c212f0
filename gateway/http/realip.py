"""The client address behind trusted proxies: ``real_ip_header`` and ``set_real_ip_from``.

A port of nginx's ``ngx_http_realip_module`` (src/http/modules/ngx_http_realip_module.c)
and the helpers it calls: ``ngx_http_get_forwarded_addr`` (ngx_http_core_module.c) and
``ngx_parse_addr_port`` / ``ngx_inet_addr`` / ``ngx_inet6_addr`` / ``ngx_inet6_ntop``
(src/core/ngx_inet.c).

This module owns the decision, for one exchange on a server with ``set_real_ip_from``,
of which client address the rest of the request sees. :class:`RealIP` is built once
per server; the site dispatcher (:mod:`gateway.http.site`) calls it for each exchange
of that server before anything else looks at the client, and servers without
``set_real_ip_from`` have no :class:`RealIP` at all (nothing happens per request).
Matching the connection's address against ``set_real_ip_from`` is
:class:`~gateway.http.access.AccessList`'s (an ``allow`` per source, then
``deny all``, is exactly ``ngx_cidr_match``).

nginx's rules, as ported:

- Only a connection whose address is in ``set_real_ip_from`` is looked at (``unix:``
  matches every unix-socket client; an IPv4-mapped IPv6 address is matched as IPv4).
  It is *trusted* whatever its headers say: ``ConnectionInfo.trusted`` is set, which
  keeps its ``X-Forwarded-For`` and ``X-Request-ID`` for the upstream.
- ``real_ip_header`` (default ``X-Real-IP``) names the header. ``X-Real-IP`` and any
  other name use the *first* such header line; ``X-Forwarded-For`` (spelled exactly so,
  as nginx compares it case-sensitively) uses every ``X-Forwarded-For`` line, the last
  one first.
- From the value, the last address is taken: the text after the last space or comma,
  trailing spaces and commas skipped. It is ``ADDR``, ``IPv4:PORT`` or ``[IPv6]:PORT``
  (nginx's lenient IPv4 syntax included: ``10.1..2`` is ``10.1.0.2``). With
  ``recursive`` (nginx's ``real_ip_recursive on``; not a configuration key of this
  gateway) addresses are taken from right to left while the one before is trusted.
- A valid address replaces ``$remote_addr`` (printed as nginx prints addresses) and
  ``$remote_port`` (the port given with it, else none). A missing or invalid value
  leaves the connection's address. ``$realip_remote_addr`` and ``$realip_remote_port``
  keep the connection's own.
"""
from __future__ import annotations

import dataclasses
from socket import AF_INET, inet_pton
from typing import Callable, Optional, Sequence

from gateway.config.model import AccessRule
from gateway.http.access import AccessList

__all__ = ["RealIP", "forwarded_address", "parse_addr_port", "server_realip"]

# ngx_http_get_forwarded_addr's results
_DECLINED, _OK, _DONE = 0, 1, 2

_INADDR_NONE = 0xFFFFFFFF
_SEPARATORS = b" ,"


# -- address text, as src/core/ngx_inet.c reads and prints it ---------------------


def inet_addr(text: bytes) -> Optional[int]:
    """``ngx_inet_addr``: a dotted quad as an int, or None. Octets are decimal, may
    have leading zeros or be empty (``1..2.3`` is ``1.0.2.3``); exactly three dots;
    ``255.255.255.255`` is INADDR_NONE, hence None."""
    addr = octet = dots = 0
    for c in text:
        if 0x30 <= c <= 0x39:
            octet = octet * 10 + c - 0x30
            if octet > 255:
                return None
        elif c == 0x2E:
            addr = (addr << 8) + octet
            octet = 0
            dots += 1
        else:
            return None
    if dots != 3:
        return None
    addr = (addr << 8) + octet
    return None if addr == _INADDR_NONE else addr


def inet6_addr(text: bytes) -> Optional[bytes]:
    """``ngx_inet6_addr``: IPv6 text (``::``, up to 4 hex digits a group, an IPv4 tail)
    as 16 bytes, or None. No zone (``%eth0``) and no brackets."""
    size = len(text)
    if size == 0:
        return None
    out = bytearray(16)
    at = 0                      # next byte of out to write
    zero: Optional[int] = None  # where "::" was, in out
    digit: Optional[int] = None  # start of the current group, in text
    nibbles = word = 0
    groups = 8
    i = 1 if text[0] == 0x3A else 0
    while i < size:
        c = text[i]
        i += 1
        if c == 0x3A:                                   # ":"
            if nibbles:
                digit = i
                out[at] = word >> 8
                out[at + 1] = word & 0xFF
                at += 2
                groups -= 1
                if groups:
                    nibbles = word = 0
                    continue
            elif zero is None:
                digit = i
                zero = at
                continue
            return None
        if c == 0x2E and nibbles:                       # "." after digits: IPv4 tail
            if groups < 2 or digit is None:
                return None
            word = inet_addr(text[digit:])
            if word is None:
                return None
            out[at] = (word >> 24) & 0xFF
            out[at + 1] = (word >> 16) & 0xFF
            at += 2
            groups -= 1
            break
        nibbles += 1
        if nibbles > 4:
            return None
        if 0x30 <= c <= 0x39:
            word = word * 16 + c - 0x30
            continue
        c |= 0x20
        if 0x61 <= c <= 0x66:
            word = word * 16 + c - 0x61 + 10
            continue
        return None
    if nibbles == 0 and zero is None:
        return None
    out[at] = (word >> 8) & 0xFF
    out[at + 1] = word & 0xFF
    at += 2
    groups -= 1
    if groups:
        if zero is None:
            return None
        gap = groups * 2
        out[zero + gap:at + gap] = out[zero:at]
        out[zero:zero + gap] = bytes(gap)
        return bytes(out)
    return bytes(out) if zero is None else None


def inet6_ntop(packed: bytes) -> str:
    """``ngx_inet6_ntop``: the longest run (the first of equal ones) of two or more
    zero groups becomes ``::``; IPv4-mapped and IPv4-compatible addresses end in a
    dotted quad (``::ffff:10.0.0.1``, ``::10.0.0.1``, but ``::1``)."""
    zero = last = -1
    longest = 1
    run = 0
    for i in range(0, 16, 2):
        if packed[i] or packed[i + 1]:
            if longest < run:
                zero, longest = last, run
            run = 0
            continue
        if run == 0:
            last = i
        run += 1
    if longest < run:
        zero, longest = last, run
    parts = []
    end = 16
    if zero == 0:
        if ((longest == 5 and packed[10] == 0xFF and packed[11] == 0xFF)
                or longest == 6
                or (longest == 7 and packed[14] != 0 and packed[15] != 1)):
            end = 12
        parts.append(":")
    i = 0
    while i < end:
        if i == zero:
            parts.append(":")
            i += longest * 2
            continue
        parts.append("%x" % (packed[i] << 8 | packed[i + 1]))
        if i < 14:
            parts.append(":")
        i += 2
    if end == 12:
        parts.append("%d.%d.%d.%d" % tuple(packed[12:16]))
    return "".join(parts)


def _parse_addr(text: bytes) -> Optional[str]:
    """``ngx_parse_addr`` then ``ngx_sock_ntop`` without the port: the address as
    nginx prints it, or None."""
    # Fast path for the common case: inet_pton accepts only plain dotted quads (no
    # leading zeros or empty octets), a subset of ngx_inet_addr's syntax that nginx
    # prints back unchanged.
    address = text.decode("latin-1")
    try:
        inet_pton(AF_INET, address)
    except (OSError, ValueError):
        pass
    else:
        return address if address != "255.255.255.255" else None
    value = inet_addr(text)
    if value is not None:
        return "%d.%d.%d.%d" % (value >> 24, (value >> 16) & 0xFF, (value >> 8) & 0xFF,
                                value & 0xFF)
    packed = inet6_addr(text)
    return inet6_ntop(packed) if packed is not None else None


def parse_addr_port(text: bytes) -> Optional[tuple[str, int]]:
    """``ngx_parse_addr_port``: ``ADDR``, ``IPv4:PORT`` or ``[IPv6]:PORT`` → (address
    text, port; 0 when none was given), or None."""
    addr = _parse_addr(text)
    if addr is not None:
        return addr, 0
    if text[:1] == b"[":
        close = text.find(b"]")
        if close == -1 or close == len(text) - 1 or text[close + 1] != 0x3A:
            return None
        host, port_text = text[1:close], text[close + 2:]
    else:
        colon = text.find(b":")
        if colon == -1:
            return None
        host, port_text = text[:colon], text[colon + 1:]
    # ngx_atoi: decimal digits only (any number of leading zeros)
    significant = port_text.lstrip(b"0")
    if not port_text.isdigit() or len(significant) > 5:
        return None
    port = int(significant or b"0")
    if not 1 <= port <= 65535:
        return None
    addr = _parse_addr(host)
    return (addr, port) if addr is not None else None


# -- ngx_http_get_forwarded_addr ---------------------------------------------------


def _forwarded_in(addr: tuple[str, int], value: bytes, trusted: Callable[[str], bool],
                  recursive: bool) -> tuple[int, tuple[str, int]]:
    """``ngx_http_get_forwarded_addr_internal`` over one header value: (result, the
    address now). The address changes only when the result is not _DECLINED."""
    found = False
    rest = value
    while True:
        if not trusted(addr[0]):
            return (_DONE if found else _DECLINED), addr
        # trailing separators are skipped; the address starts after the last separator,
        # but nginx never looks at the first byte (",10.0.0.1" is one invalid address)
        rest = rest.rstrip(_SEPARATORS)
        cut = max(rest.rfind(b" "), rest.rfind(b","))
        start = cut + 1 if cut > 0 else 0
        parsed = parse_addr_port(rest[start:])
        if parsed is None:
            return (_DONE if found else _DECLINED), addr
        addr = parsed
        found = True
        if not (recursive and start > 0):
            return _OK, addr
        rest = rest[:cut]


def forwarded_address(addr: tuple[str, int], values: Sequence[bytes],
                      trusted: Callable[[str], bool], recursive: bool = False,
                      ) -> Optional[tuple[str, int]]:
    """``ngx_http_get_forwarded_addr``: the client (address text, port) that the header
    lines ``values`` give for a connection from ``addr``, or None when they give none
    (the connection is not ``trusted``, or the value is invalid). Several lines are
    read from the last one back; without ``recursive`` only the last line counts."""
    result = _DECLINED
    found = False
    for value in reversed(values):
        result, addr = _forwarded_in(addr, value, trusted, recursive)
        if not recursive:
            break
        if result == _DECLINED and found:
            result = _DONE
            break
        if result != _OK:
            break
        found = True
    return None if result == _DECLINED else addr


# -- one server's settings -----------------------------------------------------------


class RealIP:
    """``set_real_ip_from`` and ``real_ip_header`` of one server, compiled once.

    ``sources`` are ``ServerSettings.set_real_ip_from`` entries (network texts and
    ``"unix:"``); ``header`` is ``real_ip_header`` (None: ``X-Real-IP``, nginx's
    default). Calling it with an exchange gives the exchange a trusted copy of its
    connection when the connection comes from ``sources``.
    """

    __slots__ = ("sources", "header", "recursive", "trusts", "_name", "_all_lines")

    def __init__(self, sources: Sequence[str], header: Optional[str] = None, *,
                 recursive: bool = False):
        if not sources:
            raise ValueError("set_real_ip_from is empty")
        self.sources = tuple(sources)
        self.header = header or "X-Real-IP"
        self.recursive = recursive
        rules = [AccessRule(allow=True, unix=True) if source == "unix:"
                 else AccessRule(allow=True, network=source) for source in self.sources]
        rules.append(AccessRule(allow=False, all=True))
        #: ``trusts(remote_addr)``: whether an address is in ``set_real_ip_from``
        self.trusts = AccessList(rules).allows
        self._name = self.header.lower().encode("latin-1")
        # nginx's NGX_HTTP_REALIP_XFWD is chosen by an exact, case-sensitive compare
        self._all_lines = self.header == "X-Forwarded-For"

    def __call__(self, exchange) -> None:
        accepted = exchange.connection
        if not self.trusts(accepted.remote_addr):
            return
        request = exchange.request
        if self._all_lines:
            values = request.header_values(self._name)
        else:
            value = request.header(self._name)
            values = [value] if value is not None else []
        real = None
        if values:
            real = forwarded_address((accepted.remote_addr, accepted.remote_port), values,
                                     self.trusts, self.recursive)
        if real is None:
            exchange.connection = dataclasses.replace(accepted, trusted=True,
                                                      original=accepted)
        else:
            exchange.connection = dataclasses.replace(
                accepted, remote_addr=real[0], remote_port=real[1], trusted=True,
                original=accepted)


def server_realip(server) -> Optional[RealIP]:
    """The :class:`RealIP` of a ``ServerSettings``, or None without ``set_real_ip_from``
    (nginx ignores ``real_ip_header`` alone)."""
    if not server.set_real_ip_from:
        return None
    return RealIP(server.set_real_ip_from, server.real_ip_header)
