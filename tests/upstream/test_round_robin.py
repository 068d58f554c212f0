"""Smooth weighted round robin (nginx's ``ngx_http_upstream_get_peer``): exact sequences."""
from __future__ import annotations

import re
from collections import Counter

from gateway.upstream.balancers import round_robin
from gateway.upstream import Outcome

from tests.upstream.helpers import make_group, sequence, server


def test_docstring_trace_weights_5_1_1():
    """The worked trace in the module docstring is what the balancer does:
    weights a=5, b=1, c=1 give a a b a c a a, and every current_weight returns to 0."""
    group, _ = make_group(server("a", weight=5), server("b"), server("c"))

    picks = sequence(group, 7)

    assert picks == ["a", "a", "b", "a", "c", "a", "a"]
    documented = re.search(r"→ ((?:[abc] ?)+)", round_robin.__doc__).group(1).split()
    assert picks == documented
    assert [p.current_weight for p in group.peers] == [0, 0, 0]
    # The cycle repeats exactly.
    assert sequence(group, 7) == picks


def test_docstring_trace_current_weights():
    """The intermediate current_weight values of the docstring table, pick by pick."""
    group, _ = make_group(server("a", weight=5), server("b"), server("c"))
    after = []
    for _ in range(7):
        sequence(group, 1)
        after.append(tuple(p.current_weight for p in group.peers))
    assert after == [
        (-2, 1, 1), (-4, 2, 2), (1, -4, 3), (-1, -3, 4), (4, -2, -2), (2, -1, -1),
        (0, 0, 0),
    ]


def test_equal_weights_alternate_in_configuration_order():
    """With equal weights every tie goes to the first peer, so picks rotate a b c."""
    group, _ = make_group(server("a"), server("b"), server("c"))
    assert sequence(group, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_weights_1_2_share_10_20_over_30_interleaved():
    """Weights 1 and 2: exactly 10 and 20 picks out of 30, and never two a's in a row
    or three b's in a row (smooth, not bursty)."""
    group, _ = make_group(server("a", weight=1), server("b", weight=2))

    picks = sequence(group, 30)

    assert Counter(picks) == {"a": 10, "b": 20}
    assert picks[:3] == ["b", "a", "b"]
    assert picks == picks[:3] * 10
    text = "".join(picks)
    assert "aa" not in text and "bbb" not in text


def test_down_peer_is_never_picked():
    """A peer marked down takes no requests; the others keep their ratio."""
    group, _ = make_group(server("a", weight=2), server("b", down=True), server("c"))

    picks = sequence(group, 30)

    assert "b" not in picks
    assert Counter(picks) == {"a": 20, "c": 10}
    assert group.peers[1].requests == 0


def test_peer_tried_by_the_request_is_skipped_on_retry():
    """A retry within one request goes to the best peer not yet tried, even when the
    tried one has the higher weight; a different request may pick it again."""
    group, _ = make_group(server("a", weight=5), server("b"), server("c"))
    attempts = group.attempts()

    names = []
    for _ in range(3):
        lease = group.acquire(attempts)
        names.append(lease.peer.name)
        lease.release(Outcome.NEXT)

    assert names == ["a", "b", "c"]
    assert group.acquire(attempts) is None
    assert [p.name for p in attempts.tried] == ["a", "b", "c"]
    assert group.acquire(group.attempts()).peer.name == "a"
