"""hash and hash … consistent (nginx's ``ngx_http_upstream_hash_module.c``): exact peers
per key.

The vectors for keys "1".."20" are nginx's own (Cache::Memcached compatible); the
ketama ring is checked point by point against its definition.
"""
from __future__ import annotations

import re
import zlib

from gateway.config.model import Address, PeerSettings
from gateway.upstream import Outcome, PickContext
from gateway.upstream.balancers import hash as hash_module
from gateway.upstream.balancers.hash import split_server

from tests.upstream.helpers import make_group, server

KEYS = [str(i) for i in range(1, 21)]
A, B, C = "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"


def at(text: str, host: str = "127.0.0.1", **options) -> PeerSettings:
    """A peer whose server string is ``text`` (``host:port`` as written)."""
    port = int(text.rsplit(":", 1)[1])
    return PeerSettings(address=Address(text=text, host=host, port=port), **options)


def hash_group(*servers, consistent=False):
    return make_group(*servers, balance="hash", hash_key="$arg_a", consistent=consistent)


def serve_key(group, key: str, outcome: Outcome = Outcome.OK):
    lease = group.acquire(group.attempts(), PickContext(hash_key=key))
    if lease is None:
        return None
    lease.release(outcome)
    return lease.peer.name


def keys(group, values) -> list:
    return [serve_key(group, k) for k in values]


def indexes(group, values) -> list[int]:
    names = [p.name for p in group.peers]
    return [names.index(n) for n in keys(group, values)]


def ring(group):
    return group._primary   # the tier's balancer: its ring is what is under test


# -- hash: Cache::Memcached -------------------------------------------------------


def test_docstring_trace_key_1_then_its_retry():
    """Key "1" over a, b, c: lookup 0 → 988 % 3 = 1 (b); after b fails the retry's
    lookup 1 adds 22106 → 23094 % 3 = 0 (a)."""
    group, _ = hash_group(server("a"), server("b"), server("c"))
    attempts = group.attempts()
    context = PickContext(hash_key="1")
    first = group.acquire(attempts, context)
    first.release(Outcome.FAILED)
    second = group.acquire(attempts, context)

    assert [first.peer.name, second.peer.name] == ["b", "a"]
    assert attempts.balancer_state.hash == 23094
    documented = re.search(r"→ (\w), then (\w) on a retry", hash_module.__doc__).groups()
    assert documented == ("b", "a")


def test_reference_vectors_three_equal_servers():
    group, _ = hash_group(server("a"), server("b"), server("c"))
    assert indexes(group, KEYS) == [1, 2, 1, 0, 1, 0, 0, 2, 2, 0, 2, 0, 2, 2, 1, 2, 0, 1,
                                    1, 2]
    vector = re.search(r"indexes\s+([\d\s]+)", hash_module.__doc__).group(1).split()
    assert [int(i) for i in vector] == indexes(group, KEYS)


def test_reference_vectors_with_a_weight_10_server():
    group, _ = hash_group(server("a"), server("b"), server("c", weight=10))
    assert indexes(group, KEYS) == [2, 2, 2, 2, 1, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                    1, 2]


def test_same_key_always_goes_to_the_same_peer():
    group, _ = hash_group(server("a"), server("b"), server("c"))
    assert keys(group, ["1"] * 10) == ["b"] * 10


def test_empty_key_is_served_by_round_robin():
    """nginx (since 1.17.1) falls back to round robin for an empty key."""
    group, _ = hash_group(server("a"), server("b"), server("c"))
    assert keys(group, [""] * 6) == ["a", "b", "c", "a", "b", "c"]


def test_down_peer_keeps_its_share_so_its_keys_rehash_and_no_other_key_moves():
    """Key "1" lands on b (988); with b down it re-hashes to 23094 → a. Keys that were
    not on b stay where they were (nginx's total_weight counts down peers)."""
    up, _ = hash_group(server("a"), server("b"), server("c"))
    down, _ = hash_group(server("a"), server("b", down=True), server("c"))
    before, after = keys(up, KEYS), keys(down, KEYS)

    assert after[0] == "a"
    assert "b" in before and "b" not in after
    assert [x for x, y in zip(after, before) if y != "b"] == [y for y in before if y != "b"]


def test_removing_a_server_moves_keys_of_other_servers_too():
    """Plain hash is not consistent (nginx's test "inconsistent"): without b, keys
    that were on a or c move as well."""
    three, _ = hash_group(server("a"), server("b"), server("c"))
    two, _ = hash_group(server("a"), server("c"))
    moved = [k for k, x, y in zip(KEYS, keys(three, KEYS), keys(two, KEYS))
             if x != y and x != "b"]
    assert moved == ["7", "8", "10", "11", "12", "13", "14", "16", "17", "20"]


def test_peer_at_max_conns_sends_the_key_to_its_rehash_peer():
    group, _ = hash_group(server("a"), server("b", max_conns=1), server("c"))
    held = group.acquire(group.attempts(), PickContext(hash_key="1"))
    assert held.peer.name == "b"
    assert keys(group, ["1", "1"]) == ["a", "a"]
    held.release(Outcome.OK)
    assert keys(group, ["1"]) == ["b"]


def test_failed_peer_loses_its_keys_until_fail_timeout_then_gets_one_probe():
    group, clock = hash_group(*(server(n, fail_timeout=10) for n in "abc"))
    assert serve_key(group, "1", Outcome.FAILED) == "b"
    assert keys(group, ["1", "1"]) == ["a", "a"]
    clock.advance(11)
    probe = group.acquire(group.attempts(), PickContext(hash_key="1"))
    assert probe.peer.name == "b"
    assert keys(group, ["1"]) == ["a"]                # one probe per window
    probe.release(Outcome.OK)
    assert keys(group, ["1"]) == ["b"]


def test_after_twenty_rehashes_the_request_falls_back_to_round_robin():
    """Key "1" over a, b (weight 1) and c (weight 60, down): all 21 lookups land on c,
    so round robin serves it — a, then b for the next request with the same key."""
    group, _ = hash_group(server("a"), server("b"), server("c", weight=60, down=True))
    attempts = group.attempts()
    lease = group.acquire(attempts, PickContext(hash_key="1"))
    assert lease.peer.name == "a"
    assert (attempts.balancer_state.rehash, attempts.balancer_state.tries) == (21, 21)
    lease.release(Outcome.OK)
    assert keys(group, ["1", "1", "54", "46"]) == ["b", "a", "a", "b"]


def test_key_bytes_are_the_wire_bytes():
    """A key rendered from the request (latin-1 decoded) hashes as the original bytes;
    text outside latin-1 (only possible from the config file) as UTF-8."""
    assert hash_module.key_bytes("caf\xe9") == b"caf\xe9"
    assert hash_module.key_bytes("\u20ac") == "\u20ac".encode("utf-8")


# -- hash … consistent: ketama ------------------------------------------------------


def test_server_strings_split_into_host_and_port_as_nginx_does():
    assert split_server("127.0.0.1:8081") == (b"127.0.0.1", b"8081")
    assert split_server("backend.local:80") == (b"backend.local", b"80")
    assert split_server("[::1]:8080") == (b"[::1]", b"8080")
    assert split_server("unix:/run/app.sock") == (b"/run/app.sock", b"")
    assert split_server("UNIX:/run/app.sock") == (b"/run/app.sock", b"")
    assert split_server("backend.local") == (b"backend.local", b"")
    assert split_server("[::1]") == (b"[::1]", b"")


def test_ring_points_are_chained_crc32_of_host_nul_port_prev():
    """Point 0 of a server is crc32(HOST "\\0" PORT 00000000), point j is crc32(HOST
    "\\0" PORT <point j-1 as 4 little-endian bytes>); 160 per unit of weight."""
    points = hash_module.server_points(A, 1)
    first = zlib.crc32(b"127.0.0.1\x008081" + b"\0\0\0\0")
    second = zlib.crc32(b"127.0.0.1\x008081" + first.to_bytes(4, "little"))
    assert points[:2] == [first, second] == [1353366775, points[1]]
    assert len(points) == 160
    assert len(hash_module.server_points(A, 3)) == 480
    assert hash_module.server_points("unix:/s", 1)[0] == zlib.crc32(b"/s\x00\0\0\0\0")


def test_ring_is_sorted_and_holds_160_points_per_weight():
    group, _ = hash_group(at(A), at(B), at(C, weight=2), consistent=True)
    r = ring(group)
    assert len(r.hashes) == 160 * 4
    assert r.hashes == sorted(set(r.hashes))
    assert {s: r.servers.count(s) for s in (A, B, C)} == {A: 160, B: 160, C: 320}


def test_key_starts_at_the_first_point_at_or_after_its_crc32_and_wraps():
    """"k1025" hashes above the ring's last point (4294925127 > 4291836733), so it
    wraps to point 0; a key's start is the first point >= crc32(key)."""
    group, _ = hash_group(at(A), at(B), at(C), consistent=True)
    r = ring(group)
    assert zlib.crc32(b"k1025") > r.hashes[-1]
    assert r.start("k1025") == len(r.hashes)
    assert serve_key(group, "k1025") == r.servers[0]
    for key in KEYS:
        start = r.start(key)
        assert r.hashes[start - 1] < zlib.crc32(key.encode()) <= r.hashes[start]
        assert serve_key(group, key) == r.servers[start]


def test_consistent_vectors_for_keys_1_to_20():
    """What nginx 1.22 answers for ?a=1 … ?a=20 over 127.0.0.1:8081-8083 (checked
    against a running nginx during development)."""
    group, _ = hash_group(at(A), at(B), at(C), consistent=True)
    ports = [name[-4:] for name in keys(group, KEYS)]
    assert ports == ["8081", "8083", "8081", "8083", "8081", "8083", "8081", "8082",
                     "8081", "8082", "8081", "8081", "8082", "8081", "8082", "8082",
                     "8083", "8081", "8081", "8082"]


def test_removing_one_of_three_servers_moves_only_its_keys():
    """nginx's test "consistent": comparing an upstream of three with the same minus
    8082, only keys that were on 8082 change peer — and they do change."""
    values = [str(i) for i in range(1, 201)]
    three, _ = hash_group(at(A), at(B), at(C), consistent=True)
    two, _ = hash_group(at(A), at(C), consistent=True)
    before, after = keys(three, values), keys(two, values)
    changed = [(x, y) for x, y in zip(before, after) if x != y]
    assert changed and all(x == B for x, _ in changed)
    assert before.count(B) == len(changed)


def test_removing_a_server_keeps_keys_with_weights_too():
    """nginx's test "consistent weight": 8083 weight 10, 8082 removed."""
    values = [str(i) for i in range(1, 201)]
    three, _ = hash_group(at(A), at(B), at(C, weight=10), consistent=True)
    two, _ = hash_group(at(A), at(C, weight=10), consistent=True)
    changed = [x for x, y in zip(keys(three, values), keys(two, values)) if x != y]
    assert changed and set(changed) == {B}


def test_peers_changed_rebuilds_the_ring_in_place():
    """A tier list changed in place (``resolve``) plus ``peers_changed`` gives the
    same choices as a group built without that server."""
    values = [str(i) for i in range(1, 101)]
    group, _ = hash_group(at(A), at(B), at(C), consistent=True)
    reference, _ = hash_group(at(A), at(C), consistent=True)
    group.peers.remove(group.peers[1])
    ring(group).peers_changed()
    assert len(ring(group).hashes) == 320
    assert keys(group, values) == keys(reference, values)


def test_unavailable_server_sends_its_keys_to_the_next_point_on_the_ring():
    """With 8082 down, each of its keys goes to the server of the next point on the
    ring that is not 8082 — exactly where the ring without 8082 sends it."""
    values = [str(i) for i in range(1, 201)]
    down, _ = hash_group(at(A), at(B, down=True), at(C), consistent=True)
    without, _ = hash_group(at(A), at(C), consistent=True)
    assert keys(down, values) == keys(without, values)


def test_retry_moves_along_the_ring_from_the_same_start():
    """Key "8" starts on 8082's point; when 8082 fails, the retry walks on to the next
    point of another server."""
    group, _ = hash_group(at(A), at(B), at(C), consistent=True)
    r = ring(group)
    start = r.start("8")
    following = next(s for s in r.servers[start:] if s != B)
    attempts = group.attempts()
    first = group.acquire(attempts, PickContext(hash_key="8"))
    assert first.peer.name == B
    first.release(Outcome.FAILED)
    second = group.acquire(attempts, PickContext(hash_key="8"))
    assert second.peer.name == following
    assert attempts.balancer_state.point > start


def test_peers_sharing_a_server_string_split_its_keys_by_round_robin():
    """Addresses resolved from one server name share its points; nginx picks among
    them by smooth weighted round robin, per request."""
    one = at("app.local:80", host="10.0.0.1")
    other = at("app.local:80", host="10.0.0.2", weight=2)
    group, _ = hash_group(one, other, at(C), consistent=True)
    r = ring(group)
    # both chains start alike: app.local:80 has max(1, 2) * 160 points, 8083 has 160
    assert (r.servers.count("app.local:80"), r.servers.count(C)) == (320, 160)
    key = next(k for k in (str(i) for i in range(100)) if r.servers[r.start(k)] != C)
    hosts = []
    for _ in range(3):
        lease = group.acquire(group.attempts(), PickContext(hash_key=key))
        hosts.append(lease.peer.address.host)
        lease.release(Outcome.OK)
    assert hosts == ["10.0.0.2", "10.0.0.1", "10.0.0.2"]


def test_consistent_empty_key_is_served_by_round_robin():
    group, _ = hash_group(at(A), at(B), at(C), consistent=True)
    assert keys(group, [""] * 4) == [A, B, C, A]


def test_consistent_peer_at_max_conns_passes_the_key_on_and_gets_it_back():
    group, _ = hash_group(at(A), at(B, max_conns=1), at(C), consistent=True)
    held = group.acquire(group.attempts(), PickContext(hash_key="8"))
    assert held.peer.name == B
    moved = serve_key(group, "8")
    assert moved in (A, C)
    held.release(Outcome.OK)
    assert serve_key(group, "8") == B


def test_consistent_falls_back_to_round_robin_after_twenty_moves():
    """A key whose next 21 points all belong to a down server is served by round
    robin: a, then b."""
    group, _ = hash_group(at(A), at(B), at(C, weight=60, down=True), consistent=True)
    r = ring(group)
    key = next(k for k in (str(i) for i in range(1000))
               if all(r.servers[(r.start(k) + j) % len(r.servers)] == C for j in range(21)))
    attempts = group.attempts()
    assert group.acquire(attempts, PickContext(hash_key=key)).peer.name == A
    assert attempts.balancer_state.tries == 21
    assert serve_key(group, key) == B
