"""Distinguished names as nginx prints them: ``$ssl_client_s_dn``.

nginx (since 1.11.6) prints a certificate's subject with OpenSSL's
``X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)``; this module is a port of that
function (``crypto/asn1/a_strex.c``: ``do_name_ex``, ``do_print_ex``, ``do_buf``,
``do_esc_char``) working on the DER of the name, so the output is byte for byte
OpenSSL's without calling into it:

* RDNs in reverse order, separated by ``,``; the attributes of one multi-valued RDN by
  ``+`` (``XN_FLAG_SEP_COMMA_PLUS | XN_FLAG_DN_REV``);
* each attribute as OpenSSL's short name (``CN``, ``O``, ``emailAddress``…), ``=``, and
  the value; an attribute type OpenSSL does not know is printed as its dotted OID and
  its value as ``#`` and the hex of its DER (``XN_FLAG_DUMP_UNKNOWN_FIELDS``), as is a
  value that is not a string type (``ASN1_STRFLGS_DUMP_UNKNOWN | _DUMP_DER``);
* string values converted to UTF-8, then escaped: ``, + " \\ < > ;`` with a backslash,
  ``#`` or a space at the start and a space at the end with a backslash, control
  characters and every byte above 0x7f as ``\\XX`` (``ASN1_STRFLGS_RFC2253``).

Attribute short names come from OpenSSL's object table
(:func:`gateway.tls._openssl.short_name`), so they are the ones nginx prints. This
module knows nothing of connections; :mod:`gateway.tls.server` calls it.
"""
from __future__ import annotations

from gateway.tls._openssl import short_name

__all__ = ["rfc2253_name"]

# charmap.pl: the characters escaped with a backslash anywhere, at the start, at the end
_ESCAPED = frozenset(b',+"\\<>;')
_ESCAPED_FIRST = frozenset(b" #")
_ESCAPED_LAST = frozenset(b" ")

# a_strex.c tag2nbyte: bytes per character of the string types (0: UTF-8); others dump
_WIDTHS = {12: 0, 18: 1, 19: 1, 20: 1, 22: 1, 23: 1, 24: 1, 26: 1, 28: 4, 30: 2}


def _read(der: bytes, pos: int) -> tuple[int, int, int, int]:
    """One DER element at ``pos``: (tag byte, start of contents, end of contents,
    start of the element)."""
    tag = der[pos]
    length = der[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start:start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, start, end, pos


def _oid_text(contents: bytes) -> str:
    first = contents[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in contents[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _escape_byte(byte: int, first: bool, last: bool) -> str:
    if byte > 0x7E or byte < 0x20:
        return "\\%02X" % byte
    if byte in _ESCAPED or (first and byte in _ESCAPED_FIRST) or (
            last and byte in _ESCAPED_LAST):
        return "\\" + chr(byte)
    return chr(byte)


def _characters(data: bytes, width: int) -> list[int]:
    if width == 1:
        return list(data)
    if len(data) % width:
        raise ValueError("invalid string length")
    return [int.from_bytes(data[i:i + width], "big") for i in range(0, len(data), width)]


def _string(tag: int, data: bytes) -> str:
    """``do_print_ex`` for a string type with UTF-8 conversion and RFC 2253 escapes."""
    width = _WIDTHS[tag]
    out = []
    if width == 0:
        # a UTF8String is printed byte by byte (it is UTF-8 already)
        last_index = len(data) - 1
        for i, byte in enumerate(data):
            # do_buf: the "last" flag replaces the "first" one on a one-byte value
            first = i == 0 and i != last_index
            out.append(_escape_byte(byte, first, i == last_index))
        return "".join(out)
    characters = _characters(data, width)
    last_index = len(characters) - 1
    for i, char in enumerate(characters):
        first = i == 0 and i != last_index
        last = i == last_index
        for byte in chr(char).encode("utf-8", "surrogatepass"):
            out.append(_escape_byte(byte, first, last))
    return "".join(out)


def _attribute(der: bytes, start: int, end: int) -> str:
    tag, oid_start, oid_end, _ = _read(der, start)
    if tag != 0x06:
        raise ValueError("attribute type is not an OID")
    oid = _oid_text(der[oid_start:oid_end])
    value_tag, value_start, value_end, value_pos = _read(der, oid_end)
    name = short_name(oid)
    if name is not None and value_tag in _WIDTHS:
        try:
            return f"{name}={_string(value_tag, der[value_start:value_end])}"
        except ValueError:
            pass
    return f"{name or oid}=#{der[value_pos:value_end].hex().upper()}"


def rfc2253_name(der: bytes) -> str:
    """The DER of an X.509 Name printed as ``X509_NAME_print_ex(…, XN_FLAG_RFC2253)``:
    ``CN=client,O=Example\\, Inc.,C=US``."""
    tag, start, end, _ = _read(der, 0)
    if tag != 0x30:
        raise ValueError("not a Name")
    rdns: list[list[str]] = []
    pos = start
    while pos < end:
        _, set_start, set_end, _ = _read(der, pos)
        attributes = []
        inner = set_start
        while inner < set_end:
            _, seq_start, seq_end, _ = _read(der, inner)
            attributes.append(_attribute(der, seq_start, seq_end))
            inner = seq_end
        rdns.append(attributes)
        pos = set_end
    # XN_FLAG_DN_REV reverses the entries, including those inside one RDN
    return ",".join("+".join(reversed(rdn)) for rdn in reversed(rdns))
