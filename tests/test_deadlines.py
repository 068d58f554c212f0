"""The coarse deadline sweep, on task.Clock."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.deadlines import Deadlines


class Owner:
    def __init__(self, events, name, deadline=None):
        self.events = events
        self.name = name
        self.deadline = deadline

    def deadline_expired(self):
        self.events.append(self.name)
        self.deadline = None


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sweep = Deadlines(self.clock, resolution=0.1)
        self.events = []

    def test_owner_expires_at_the_first_sweep_after_its_deadline_never_before(self):
        self.sweep.add(Owner(self.events, "a", deadline=0.25))
        self.clock.advance(0.2)
        self.assertEqual(self.events, [])
        self.clock.advance(0.1)
        self.assertEqual(self.events, ["a"])

    def test_owner_without_deadline_is_never_called(self):
        self.sweep.add(Owner(self.events, "idle"))
        self.clock.pump([0.1] * 20)
        self.assertEqual(self.events, [])

    def test_moving_a_deadline_postpones_expiry(self):
        owner = Owner(self.events, "a", deadline=0.3)
        self.sweep.add(owner)
        self.clock.advance(0.2)
        owner.deadline = 0.6
        self.clock.pump([0.1] * 3)
        self.assertEqual(self.events, [])
        self.clock.advance(0.1)
        self.assertEqual(self.events, ["a"])

    def test_sweep_stops_when_the_last_owner_leaves(self):
        owner = Owner(self.events, "a", deadline=5)
        self.sweep.add(owner)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.sweep.discard(owner)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_owner_discarded_during_a_sweep_is_not_called(self):
        second = Owner(self.events, "second", deadline=0.1)

        class Discarding(Owner):
            def deadline_expired(inner):
                self.events.append(inner.name)
                self.sweep.discard(second)

        self.sweep.add(Discarding(self.events, "first", deadline=0.1))
        self.sweep.add(second)
        self.clock.advance(0.1)
        self.assertIn(self.events, (["first"], ["second", "first"]))
        self.assertEqual(len(self.sweep), 1)
