"""random and random two (nginx's ``ngx_http_upstream_random_module.c``): exact
sequences from scripted draws."""
from __future__ import annotations

import random

import pytest

from gateway.upstream import Outcome
from gateway.upstream.balancers import random as random_module
from gateway.upstream.balancers.random import Random, RandomTwo

from tests.upstream.helpers import make_group, server


class Draws:
    """A scripted source: ``randrange(n)`` returns the next value (asserting it is
    below ``n``) and records ``n``."""

    def __init__(self, *values: int):
        self.values = list(values)
        self.bounds: list[int] = []

    def randrange(self, n: int) -> int:
        self.bounds.append(n)
        assert self.values, "more draws than scripted"
        value = self.values.pop(0)
        assert 0 <= value < n
        return value


def random_group(*servers, draws: Draws, two: bool = False):
    group, clock = make_group(*servers, balance="random", two=two)
    group._primary.rng = draws     # the tier's balancer: its source is what is scripted
    return group, clock


def hold(group) -> str:
    return group.acquire(group.attempts()).peer.name


def serve(group, outcome: Outcome = Outcome.OK):
    lease = group.acquire(group.attempts())
    if lease is None:
        return None
    lease.release(outcome)
    return lease.peer.name


def test_settings_select_the_variant():
    assert type(make_group(server("a"), server("b"), balance="random")[0]._primary) is Random
    two, _ = make_group(server("a"), server("b"), balance="random", two=True)
    assert type(two._primary) is RandomTwo


def test_default_source_is_a_private_random_generator():
    group, _ = make_group(server("a"), server("b"), balance="random")
    assert isinstance(group._primary.rng, random.Random)
    assert group._primary.rng is not make_group(server("a"), server("b"),
                                                 balance="random")[0]._primary.rng


# -- random -------------------------------------------------------------------------


def test_draws_map_to_weight_ranges_in_configuration_order():
    """Weights a=1, b=2, c=3 own [0], [1, 2], [3, 5] of randrange(6)."""
    draws = Draws(0, 1, 2, 3, 4, 5)
    group, _ = random_group(server("a"), server("b", weight=2), server("c", weight=3),
                            draws=draws)
    assert [serve(group) for _ in range(6)] == ["a", "b", "b", "c", "c", "c"]
    assert draws.bounds == [6] * 6


def test_down_peer_keeps_its_range_and_drawing_it_costs_a_try():
    draws = Draws(1, 1, 0, 2)
    group, _ = random_group(server("a"), server("b", down=True), server("c"), draws=draws)
    attempts = group.attempts()
    assert group.acquire(attempts).peer.name == "a"
    assert attempts.balancer_state == 2
    assert serve(group) == "c"
    assert draws.bounds == [3, 3, 3, 3]


def test_retry_draws_again_and_skips_the_peer_already_tried():
    draws = Draws(0, 0, 1)
    group, _ = random_group(server("a"), server("b"), draws=draws)
    attempts = group.attempts()
    first = group.acquire(attempts)
    first.release(Outcome.FAILED)
    second = group.acquire(attempts)
    assert [first.peer.name, second.peer.name] == ["a", "b"]
    assert attempts.balancer_state == 1


def test_peer_at_max_conns_is_redrawn_until_a_connection_ends():
    draws = Draws(0, 0, 1, 0)
    group, _ = random_group(server("a", max_conns=1), server("b"), draws=draws)
    held = group.acquire(group.attempts())
    assert held.peer.name == "a"
    assert serve(group) == "b"                  # a drawn but full, then b
    held.release(Outcome.OK)
    assert serve(group) == "a"


def test_failed_peer_is_redrawn_until_fail_timeout_then_probed():
    draws = Draws(0, 0, 1, 0)
    group, clock = random_group(server("a", fail_timeout=10), server("b"), draws=draws)
    assert serve(group, Outcome.FAILED) == "a"
    assert serve(group) == "b"
    clock.advance(11)
    assert serve(group) == "a"
    assert group.peers[0].checked == 11


def test_more_than_twenty_wasted_draws_fall_back_to_round_robin():
    """21 draws of the down peer: the request goes to round robin (a), and its retry
    goes straight to round robin without drawing."""
    draws = Draws(*[2] * 21)
    group, _ = random_group(server("a"), server("b"), server("c", down=True), draws=draws)
    attempts = group.attempts()
    first = group.acquire(attempts)
    assert first.peer.name == "a"
    assert attempts.balancer_state == 21
    first.release(Outcome.FAILED)
    assert group.acquire(attempts).peer.name == "b"
    assert len(draws.bounds) == 21


def test_no_live_upstreams_after_the_fallback_finds_nothing():
    draws = Draws(*[0, 1] * 11)
    group, _ = random_group(server("a", down=True), server("b", down=True), draws=draws)
    assert serve(group) is None
    assert len(draws.bounds) == 21


# -- random two ---------------------------------------------------------------------


def test_docstring_trace_random_two():
    """Draws 0 0 2 then 1 2 over a, b, c: c (tie: the second wins), then b (c is
    busy) — the module docstring's trace."""
    draws = Draws(0, 0, 2, 1, 2)
    group, _ = random_group(server("a"), server("b"), server("c"), draws=draws, two=True)
    picks = [hold(group), hold(group)]
    assert picks == ["c", "b"]
    assert random_module.__doc__.split("→ ")[1].startswith("c b.")
    assert draws.values == []


def test_two_sends_to_the_less_loaded_of_the_pair():
    draws = Draws(0, 1, 1, 0, 0, 1)
    group, _ = random_group(server("a"), server("b"), draws=draws, two=True)
    assert hold(group) == "b"                   # 0:0, the second wins the tie
    assert hold(group) == "a"                   # b holds 1: a (second) has fewer
    assert hold(group) == "b"                   # 1:1 again: second (b)


def test_two_compares_connections_relative_to_weight():
    """a (weight 2) holding 2 ties with b (weight 1) holding 1: the second drawn wins;
    with a third connection on a, b wins from either order."""
    draws = Draws(0, 2, 2, 0, 0, 2)
    group, _ = random_group(server("a", weight=2), server("b"), draws=draws, two=True)
    a, b = group.peers
    a.conns, b.conns = 2, 1
    assert serve(group) == "b"                  # pair (a, b), tie → b
    assert serve(group) == "a"                  # pair (b, a), tie → a
    a.conns = 3
    assert serve(group) == "b"
    assert draws.bounds == [3] * 6


def test_two_never_pairs_a_peer_with_itself_and_counts_every_draw():
    """Drawing the first peer again is wasted; the first peer kept counts as a try
    too (nginx falls through to its "next" label), so a pick costs at least one."""
    draws = Draws(0, 0, 0, 1)
    group, _ = random_group(server("a"), server("b"), draws=draws, two=True)
    attempts = group.attempts()
    assert group.acquire(attempts).peer.name == "b"
    assert attempts.balancer_state == 3


def test_two_skips_peers_at_max_conns_and_down():
    """Draws 0 (a, full), 1 (b, down), 2 (c: first), 2 (c again), 3 (d: second): the
    pair is c, d, idle both, so d; four tries were counted."""
    draws = Draws(0, 1, 2, 2, 3)
    group, _ = random_group(server("a", max_conns=1), server("b", down=True), server("c"),
                            server("d"), draws=draws, two=True)
    group.peers[0].conns = 1                    # a is at max_conns (held elsewhere)
    attempts = group.attempts()
    assert group.acquire(attempts).peer.name == "d"
    assert attempts.balancer_state == 4
    assert draws.values == []
def test_two_falls_back_to_round_robin_after_twenty_tries():
    """With a single eligible peer no pair can be formed: 21 counted draws, then
    round robin serves the request from that peer."""
    draws = Draws(*[0, 1] * 10, 0)
    group, _ = random_group(server("a"), server("b", down=True), draws=draws, two=True)
    attempts = group.attempts()
    assert group.acquire(attempts).peer.name == "a"
    assert attempts.balancer_state == 21
    assert draws.values == []


@pytest.mark.parametrize("cls", [Random, RandomTwo])
def test_seeded_source_gives_a_repeatable_sequence(cls):
    """Any ``randrange`` source works; the same seed gives the same picks."""
    def run():
        group, _ = make_group(server("a"), server("b", weight=3), balance="random",
                              two=cls is RandomTwo)
        group._primary.rng = random.Random(1234)
        return [serve(group) for _ in range(40)]

    first = run()
    assert first == run()
    assert set(first) == {"a", "b"}
