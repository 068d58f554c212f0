"""ip_hash (nginx's ``ngx_http_upstream_get_ip_hash_peer``): exact peers per client.

The hash values quoted in comments are nginx's: 89, then ``(h * 113 + byte) % 6271``
over the first three IPv4 octets (or the 16 bytes of IPv6, or 0.0.0 for unix: clients).
"""
from __future__ import annotations

import re

from gateway.upstream import Outcome, PickContext
from gateway.upstream.balancers import ip_hash

from tests.upstream.helpers import make_group, server


def group_of(*servers):
    return make_group(*servers, balance="ip_hash")


def peers(*names, **options):
    return [server(n, **options) for n in names]


def serve_client(group, addr: str, outcome: Outcome = Outcome.OK):
    """One request from ``addr`` with one attempt; the peer's name or None."""
    lease = group.acquire(group.attempts(), PickContext(remote_addr=addr))
    if lease is None:
        return None
    lease.release(outcome)
    return lease.peer.name


def clients(group, addrs) -> list:
    return [serve_client(group, a) for a in addrs]


def test_docstring_trace_clients_127_0_i_2():
    """127.0.i.2 hashes to 4040 + i: over a, b it alternates b a b a from i = 1; over
    a, b, c it cycles a b c — the module docstring's trace."""
    two, _ = group_of(*peers("a", "b"))
    three, _ = group_of(*peers("a", "b", "c"))
    addrs = [f"127.0.{i}.2" for i in range(1, 7)]

    assert clients(two, addrs[:4]) == ["b", "a", "b", "a"]
    assert clients(three, addrs) == ["a", "b", "c", "a", "b", "c"]
    documented = re.search(r"→ ((?:[ab] )+)for", ip_hash.__doc__).group(1).split()
    assert documented == ["b", "a", "b", "a"]
    assert "a b c a b c" in ip_hash.__doc__


def test_whole_slash_24_goes_to_one_peer_and_the_fourth_octet_never_matters():
    group, _ = group_of(*peers("a", "b", "c"))
    assert set(clients(group, [f"127.0.2.{d}" for d in range(1, 255)])) == {"b"}
    assert set(clients(group, [f"10.9.8.{d}" for d in (0, 7, 255)])) == {
        clients(group, ["10.9.8.1"])[0]}


def test_same_client_always_gets_the_same_peer():
    """No rotation state: a client sticks to its peer however many requests it makes."""
    group, _ = group_of(*peers("a", "b", "c"))
    assert clients(group, ["127.0.3.9"] * 5) == ["c"] * 5


def test_ipv6_hashes_all_sixteen_bytes():
    """::1 → 5945 and ::2 → 5946 (the last byte counts, unlike IPv4's fourth octet);
    an IPv4-mapped address is IPv6 to nginx: ::ffff:127.0.1.2 → 3347 (c), while
    127.0.1.2 → 4041 (a)."""
    group, _ = group_of(*peers("a", "b", "c"))
    assert clients(group, ["::1", "::2", "::ffff:127.0.1.2", "127.0.1.2"]) == [
        "c", "a", "c", "a"]


def test_unix_socket_clients_use_the_pseudo_address():
    """Clients without an IP (``unix:``) hash nginx's pseudo address 0.0.0 → 295."""
    group, _ = group_of(*peers("a", "b", "c"))
    assert clients(group, ["unix:", "unix:", ""]) == ["b", "b", "b"]
    assert ip_hash.address_bytes("unix:") == b"\0\0\0"
    assert ip_hash.address_bytes("127.0.1.2") == bytes([127, 0, 1])
    assert len(ip_hash.address_bytes("fe80::1%eth0")) == 16


def test_weights_split_the_hash_range():
    """Weights a=1, b=2: hash % 3 is 0 → a, 1 or 2 → b. 127.0.i.2 (4040 + i)."""
    group, _ = group_of(server("a"), server("b", weight=2))
    assert clients(group, [f"127.0.{i}.2" for i in range(1, 7)]) == [
        "a", "b", "b", "a", "b", "b"]


def test_unavailable_peer_rehashes_from_the_last_hash():
    """127.0.1.2 over a, b, c: lookups 4041 (a), 6078 (a), 922 (b). With a down the
    client goes to b, having spent two re-hashes."""
    group, _ = group_of(server("a", down=True), server("b"), server("c"))
    attempts = group.attempts()
    lease = group.acquire(attempts, PickContext(remote_addr="127.0.1.2"))
    assert lease.peer.name == "b"
    assert (attempts.balancer_state.hash, attempts.balancer_state.tries) == (922, 2)


def test_retry_continues_from_the_hash_of_the_peer_that_failed():
    """127.0.1.2's first attempt goes to a (4041); a fails, and the retry re-hashes
    from 4041: 6078 → a (tried), 922 → b."""
    group, clock = group_of(*peers("a", "b", "c", fail_timeout=10))
    context = PickContext(remote_addr="127.0.1.2")
    attempts = group.attempts()

    first = group.acquire(attempts, context)
    assert first.peer.name == "a"
    first.release(Outcome.FAILED)
    second = group.acquire(attempts, context)
    assert second.peer.name == "b"
    assert attempts.balancer_state.hash == 922
    second.release(Outcome.OK)


def test_failed_peer_loses_its_clients_until_fail_timeout_then_gets_a_probe():
    group, clock = group_of(*peers("a", "b", "c", fail_timeout=10))
    assert serve_client(group, "127.0.1.2", Outcome.FAILED) == "a"
    assert clients(group, ["127.0.1.2"] * 3) == ["b"] * 3
    clock.advance(11)
    assert serve_client(group, "127.0.1.2") == "a"
    assert group.peers[0].checked == 11
    assert group.peers[0].fails == 0
    assert clients(group, ["127.0.1.2"] * 2) == ["a"] * 2


def test_peer_at_max_conns_sends_its_clients_elsewhere_until_a_connection_ends():
    group, _ = group_of(server("a", max_conns=1), server("b"), server("c"))
    context = PickContext(remote_addr="127.0.1.2")
    held = group.acquire(group.attempts(), context)
    assert held.peer.name == "a"
    assert serve_client(group, "127.0.1.2") == "b"      # 4041 a (full), 6078 a, 922 b
    held.release(Outcome.OK)
    assert serve_client(group, "127.0.1.2") == "a"


def test_marking_a_peer_down_moves_only_its_own_clients():
    """A down peer keeps its share of the hash range (nginx's total_weight counts it),
    so only its clients move; everyone else stays where they were."""
    addrs = [f"127.0.{i}.2" for i in range(60)]
    before = clients(group_of(*peers("a", "b", "c"))[0], addrs)
    after = clients(group_of(server("a"), server("b"), server("c", down=True))[0], addrs)

    assert "c" in before and "c" not in after
    assert [a for a, b in zip(after, before) if b != "c"] == [b for b in before if b != "c"]


def test_after_twenty_rehashes_the_request_falls_back_to_round_robin():
    """127.0.0.2 over a, b (weight 1) and c (weight 60, down): all 21 lookups land on
    c, so the request is served by round robin over the tier — and the next request
    from the same client gets the next peer in round robin order, not the same one."""
    group, _ = group_of(server("a"), server("b"), server("c", weight=60, down=True))
    attempts = group.attempts()
    lease = group.acquire(attempts, PickContext(remote_addr="127.0.0.2"))
    assert lease.peer.name == "a"
    assert attempts.balancer_state.tries == 21
    lease.release(Outcome.OK)

    assert clients(group, ["127.0.0.2"] * 3) == ["b", "a", "b"]
    # Clients whose first lookup finds a live peer are not affected: 127.0.52.2 →
    # 4092 % 62 = 0 (a), 127.0.53.2 → 4093 % 62 = 1 (b).
    assert clients(group, ["127.0.52.2", "127.0.53.2"] * 2) == ["a", "b", "a", "b"]


def test_no_live_upstreams_when_every_peer_is_unavailable():
    group, _ = group_of(server("a", down=True), server("b", down=True))
    assert serve_client(group, "127.0.1.2") is None
