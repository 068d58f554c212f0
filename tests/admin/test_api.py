"""gateway.admin.api: down, drain and weight at run time, validated and logged."""
from __future__ import annotations

import json
from collections import Counter

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from gateway.admin.api import ApiError, UpstreamAPI
from gateway.config.model import QueueSettings
from gateway.upstream import Outcome, UpstreamManager
from tests.upstream.helpers import sequence, serve, server, upstream


def manager_of(*groups) -> tuple[UpstreamManager, Clock]:
    clock = Clock()
    return UpstreamManager({g.name: g for g in groups}, clock), clock


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


class Changes(unittest.TestCase):
    def setUp(self):
        self.manager, self.clock = manager_of(upstream(server("a"), server("b")))
        self.group = self.manager.group("app")
        self.api = UpstreamAPI(self.manager)

    def test_get_shows_the_peer_with_its_down_and_drain_flags(self):
        document = self.api.server("app", "a")
        self.assertEqual(
            (document["name"], document["state"], document["down"], document["drain"],
             document["weight"]),
            ("a", "up", False, False, 1))

    def test_down_takes_the_peer_out_of_new_picks_and_back(self):
        document = self.api.change_server("app", "a", body(down=True))
        self.assertEqual((document["state"], document["down"]), ("down", True))
        self.assertEqual(sequence(self.group, 4), ["b"] * 4)
        self.api.change_server("app", "a", body(down=False))
        self.assertEqual(sorted(sequence(self.group, 2)), ["a", "b"])

    def test_drain_lets_leases_in_flight_finish_and_sends_new_requests_elsewhere(self):
        held = self.group.acquire(self.group.attempts())
        self.assertEqual(held.peer.name, "a")
        document = self.api.change_server("app", "a", body(drain=True))
        self.assertEqual((document["state"], document["drain"], document["active"]),
                         ("draining", True, 1))
        self.assertEqual(sequence(self.group, 3), ["b"] * 3)
        held.release(Outcome.OK)                  # the in-flight one ends normally
        self.assertEqual(self.api.server("app", "a")["active"], 0)
        self.api.change_server("app", "a", body(drain=False))
        self.assertEqual(self.api.server("app", "a")["state"], "up")
        self.assertIn("a", sequence(self.group, 2))

    def test_weight_changes_the_round_robin_distribution_at_the_next_pick(self):
        self.api.change_server("app", "b", body(weight=3))
        self.assertEqual(Counter(sequence(self.group, 8)), {"a": 2, "b": 6})
        self.assertEqual(self.api.server("app", "b")["weight"], 3)

    def test_changes_are_logged_with_structured_fields(self):
        with capturedLogs() as events:
            self.api.change_server("app", "a", body(down=True, weight=2), client="127.0.0.1")
        changes = [(e["upstream"], e["server"], e["field"], e["old"], e["new"], e["client"])
                   for e in events if "field" in e]
        self.assertEqual(changes, [("app", "a", "down", False, True, "127.0.0.1"),
                                   ("app", "a", "weight", 1, 2, "127.0.0.1")])
        self.assertEqual(events[0]["change"], "down false -> true")

    def test_a_bad_body_changes_nothing(self):
        """Every field is checked before any is applied."""
        cases = [
            (b"{", "the body is not valid JSON"),
            (b"[1]", "the body must be a JSON object"),
            (b"{}", "nothing to change"),
            (body(down=True, colour="red"), 'unknown field(s) "colour"'),
            (body(down=1), "down must be true or false, got 1"),
            (body(drain="yes"), 'drain must be true or false, got "yes"'),
            (body(down=True, weight=0), "weight must be an integer of at least 1, got 0"),
            (body(weight=True), "weight must be an integer of at least 1, got true"),
            (body(weight=1.5), "weight must be an integer of at least 1, got 1.5"),
        ]
        for data, text in cases:
            with self.assertRaises(ApiError) as caught:
                self.api.change_server("app", "a", data)
            self.assertEqual(caught.exception.status, 400)
            self.assertIn(text, caught.exception.text)
        self.assertEqual(self.api.server("app", "a")["down"], False)

    def test_unknown_group_or_server_is_404(self):
        for call in (lambda: self.api.server("nope", "a"),
                     lambda: self.api.server("app", "z"),
                     lambda: self.api.change_server("app", "z", body(down=True)),
                     lambda: self.api.group("nope"),
                     lambda: self.api.servers("nope")):
            with self.assertRaises(ApiError) as caught:
                call()
            self.assertEqual(caught.exception.status, 404)
        self.assertEqual(caught.exception.text, "no upstream group 'nope'")


class GroupEffects(unittest.TestCase):
    def test_a_drained_single_server_gets_no_new_request(self):
        manager, _ = manager_of(upstream(server("only")))
        api = UpstreamAPI(manager)
        api.change_server("app", "only", body(drain=True))
        self.assertIsNone(serve(manager.group("app")))

    def test_bringing_a_peer_back_serves_the_requests_waiting_in_the_queue(self):
        manager, _ = manager_of(upstream(
            server("a", max_conns=1), server("b", down=True),
            queue=QueueSettings(size=5, timeout=30)))
        group = manager.group("app")
        api = UpstreamAPI(manager)
        held = group.acquire(group.attempts())
        attempts = group.attempts()
        self.assertIsNone(group.acquire(attempts))
        waiting = group.wait(attempts)
        served = []
        waiting.addCallback(served.append)
        api.change_server("app", "b", body(down=False))
        self.assertEqual([lease.peer.name for lease in served], ["b"])
        served[0].release(Outcome.OK)
        held.release(Outcome.OK)

    def test_a_new_weight_rebuilds_the_totals_of_random(self):
        class Draws:
            def __init__(self):
                self.asked = []

            def randrange(self, n):
                self.asked.append(n)
                return n - 1          # the last unit of the range: the last peer

        manager, _ = manager_of(upstream(server("a"), server("b"), balance="random"))
        group = manager.group("app")
        draws = group._primary.rng = Draws()
        UpstreamAPI(manager).change_server("app", "a", body(weight=4))
        self.assertEqual(serve(group), "b")
        self.assertEqual(draws.asked, [5])

    def test_a_new_weight_rebuilds_the_consistent_hash_ring(self):
        """ketama: 160 points per unit of weight."""
        manager, _ = manager_of(upstream(server("a"), server("b"), balance="hash",
                                         hash_key="$request_uri", consistent=True))
        ring = manager.group("app")._primary
        self.assertEqual(ring.servers.count("b"), 160)
        UpstreamAPI(manager).change_server("app", "b", body(weight=3))
        self.assertEqual((ring.servers.count("a"), ring.servers.count("b")), (160, 480))

    def test_down_outranks_drain_in_the_state(self):
        manager, _ = manager_of(upstream(server("a"), server("b")))
        api = UpstreamAPI(manager)
        api.change_server("app", "a", body(drain=True, down=True))
        self.assertEqual(api.server("app", "a")["state"], "down")
        api.change_server("app", "a", body(down=False))
        self.assertEqual(api.server("app", "a")["state"], "draining")

    def test_a_weight_change_keeps_a_failed_peers_deficit(self):
        manager, clock = manager_of(upstream(server("a", weight=4, max_fails=2),
                                             server("b")))
        group = manager.group("app")
        peer = group.peers[0]
        lease = group.acquire(group.attempts())
        lease.release(Outcome.FAILED)             # effective 4 - 4 // 2 = 2
        self.assertEqual(peer.effective_weight, 2)
        UpstreamAPI(manager).change_server("app", "a", body(weight=6))
        self.assertEqual((peer.weight, peer.effective_weight), (6, 4))
        UpstreamAPI(manager).change_server("app", "a", body(weight=1))
        self.assertEqual((peer.weight, peer.effective_weight), (1, 0))
