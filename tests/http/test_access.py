"""Access rules: ``ngx_http_access_module`` semantics, as transcripts.

Each table gives a rule list (as written in ``access = [...]``) and, per client
address, whether nginx lets the request through.
"""
from __future__ import annotations

import pytest

from gateway.config.model import AccessRule
from gateway.http.access import AccessList


def rules(*texts: str) -> AccessList:
    """Build the rules the loader would from ``"allow 10.0.0.0/8"`` etc."""
    built = []
    for text in texts:
        verb, _, what = text.partition(" ")
        assert verb in ("allow", "deny")
        allow = verb == "allow"
        if what == "all":
            built.append(AccessRule(allow=allow, all=True))
        elif what == "unix:":
            built.append(AccessRule(allow=allow, unix=True))
        else:
            built.append(AccessRule(allow=allow, network=what))
    return AccessList(built)


TYPICAL = ("allow 10.0.0.0/8", "allow 127.0.0.1", "allow 2001:db8::/32", "deny all")


@pytest.mark.parametrize(
    "addr, allowed",
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::1", False),
        ("::ffff:10.1.2.3", True),         # IPv4-mapped: checked as 10.1.2.3
        ("::ffff:11.1.2.3", False),
        ("unix:", False),                   # only "deny all" applies to unix sockets
        ("not-an-address", False),          # matches only "all"
    ],
)
def test_typical_list(addr: str, allowed: bool) -> None:
    assert rules(*TYPICAL).allows(addr) is allowed


@pytest.mark.parametrize(
    "rule_texts, addr, allowed",
    [
        # no rules: everyone
        ((), "1.2.3.4", True),
        ((), "unix:", True),
        ((), "garbage", True),
        # first match wins, order matters
        (("deny 10.0.0.1", "allow 10.0.0.0/8", "deny all"), "10.0.0.1", False),
        (("deny 10.0.0.1", "allow 10.0.0.0/8", "deny all"), "10.0.0.2", True),
        (("allow 10.0.0.0/8", "deny 10.0.0.1", "deny all"), "10.0.0.1", True),
        (("allow all", "deny 10.0.0.1"), "10.0.0.1", True),
        # nothing matched: allowed (nginx declines, the phase goes on)
        (("deny 10.0.0.0/8",), "192.168.1.1", True),
        (("allow 10.0.0.0/8",), "192.168.1.1", True),
        (("deny 2001:db8::/32",), "10.0.0.1", True),
        # CIDR boundaries
        (("deny 192.168.1.0/24",), "192.168.1.255", False),
        (("deny 192.168.1.0/24",), "192.168.2.0", True),
        (("deny 192.168.1.128/25",), "192.168.1.127", True),
        (("deny 192.168.1.128/25",), "192.168.1.128", False),
        (("deny 0.0.0.0/0",), "8.8.8.8", False),
        (("deny 0.0.0.0/0",), "::1", True),            # an IPv4 rule never sees IPv6
        (("deny 1.2.3.4/32",), "1.2.3.4", False),
        (("deny 1.2.3.4/32",), "1.2.3.5", True),
        # host bits in a network are ignored (nginx: "low address bits are meaningless")
        (("deny 10.1.2.3/8",), "10.200.0.1", False),
        # IPv6
        (("deny ::1",), "::1", False),
        (("deny ::1",), "0:0:0:0:0:0:0:1", False),
        (("deny ::/0",), "fe80::1", False),
        (("deny ::/0",), "10.0.0.1", True),            # an IPv6 rule never sees IPv4
        (("deny fe80::/10",), "fe80::1%eth0", False),  # a zone id does not matter
        (("deny 2001:db8::/127",), "2001:db8::1", False),
        (("deny 2001:db8::/127",), "2001:db8::2", True),
        # IPv4-mapped clients are matched by IPv4 rules …
        (("deny 10.0.0.0/8",), "::ffff:10.0.0.1", False),
        (("deny 10.0.0.0/8", "allow all"), "::ffff:10.0.0.1", False),
        (("allow 10.0.0.1", "deny all"), "::ffff:10.0.0.1", True),
        (("allow 10.0.0.1", "deny all"), "::ffff:10.0.0.2", False),
        # … and then IPv6 rules do not see them, even a matching one
        (("allow 10.0.0.1", "deny ::ffff:0:0/96"), "::ffff:10.0.0.2", True),
        (("deny ::ffff:0:0/96", "allow 10.0.0.0/8"), "::ffff:10.0.0.2", True),
        # … unless there is no IPv4 rule at all: then they are IPv6 addresses
        (("deny ::ffff:0:0/96",), "::ffff:10.0.0.2", False),
        (("deny ::ffff:10.0.0.0/104",), "::ffff:10.0.0.2", False),
        # an IPv4-compatible (not mapped) address is IPv6
        (("deny 10.0.0.0/8",), "::10.0.0.1", True),
        # unix sockets: "unix:" and "all" rules only
        (("allow unix:", "deny all"), "unix:", True),
        (("deny unix:",), "unix:", False),
        (("deny unix:",), "127.0.0.1", True),
        (("allow 127.0.0.1", "deny all"), "unix:", False),
        (("deny all", "allow unix:"), "unix:", False),
        (("allow 0.0.0.0/0", "allow ::/0", "deny all"), "unix:", False),
        # unparsable addresses: only "all"
        (("deny 0.0.0.0/0", "deny ::/0"), "bogus", True),
        (("deny 0.0.0.0/0", "deny all"), "10.1", False),    # no inet_aton shorthands
        (("deny 0.0.0.0/0",), "10.1", True),
        (("deny 0.0.0.0/0",), "1.2.3.4\x00", True),
        (("deny 0.0.0.0/0", "deny ::/0", "deny all"), "bogus", False),
        (("allow all",), "", True),
        (("deny all",), "", False),
    ],
)
def test_rules(rule_texts, addr: str, allowed: bool) -> None:
    assert rules(*rule_texts).allows(addr) is allowed


def test_rules_are_kept_in_order() -> None:
    access = rules("allow 10.0.0.1", "deny all")
    assert [rule.allow for rule in access.rules] == [True, False]


def test_rule_without_address_is_an_error() -> None:
    with pytest.raises(ValueError):
        AccessList([AccessRule(allow=True)])


def test_bad_network_is_an_error() -> None:
    with pytest.raises(ValueError):
        AccessList([AccessRule(allow=True, network="10.0.0.0/33")])
