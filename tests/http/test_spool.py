"""ResponseSpool: pass-through, memory, temp file spill, upstream pause, finish order."""
from twisted.trial.unittest import SynchronousTestCase

from gateway.http.spool import ResponseSpool


class RecordingExchange:
    def __init__(self):
        self.events = []
        self.body = b""

    def send_body(self, data):
        self.events.append(("body", len(data)))
        self.body += data

    def finish(self):
        self.events.append(("finish",))

    def unregister_producer(self):
        self.events.append(("unregister",))


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.exchange = RecordingExchange()
        self.upstream = []
        self.spool = ResponseSpool(
            self.exchange,
            pause_upstream=lambda: self.upstream.append("pause"),
            resume_upstream=lambda: self.upstream.append("resume"),
            memory_limit=10, file_limit=20,
        )

    def test_bytes_pass_straight_through_while_the_client_keeps_up(self):
        self.spool.write(b"abc")
        self.spool.finish()
        self.assertEqual(
            self.exchange.events, [("body", 3), ("unregister",), ("finish",)]
        )

    def test_paused_client_buffers_in_memory_then_in_a_file_and_drains_in_order(self):
        self.spool.pauseProducing()
        for chunk in (b"01234", b"56789", b"abcdefghij", b"KLMNO"):
            self.spool.write(chunk)
        self.assertEqual(self.exchange.body, b"")
        self.assertTrue(self.spool.spilled)
        self.assertEqual(self.spool.buffered, 25)
        self.spool.finish()
        self.assertEqual(self.exchange.events, [])
        self.spool.resumeProducing()
        self.assertEqual(self.exchange.body, b"0123456789abcdefghijKLMNO")
        self.assertEqual(self.exchange.events[-2:], [("unregister",), ("finish",)])
        self.assertFalse(self.spool.spilled)

    def test_upstream_paused_beyond_both_limits_and_resumed_once_drained(self):
        self.spool.pauseProducing()
        self.spool.write(b"x" * 29)
        self.assertEqual(self.upstream, [])
        self.spool.write(b"x")
        self.assertEqual(self.upstream, ["pause"])
        self.spool.resumeProducing()
        self.assertEqual(self.upstream, ["pause", "resume"])
        self.assertEqual(len(self.exchange.body), 30)

    def test_client_pausing_mid_drain_keeps_the_rest(self):
        self.spool.pauseProducing()
        self.spool.write(b"aaaa")
        self.spool.write(b"bbbb")
        original = self.exchange.send_body

        def send_and_pause(data):
            original(data)
            self.spool.pauseProducing()

        self.exchange.send_body = send_and_pause
        self.spool.resumeProducing()
        self.assertEqual(self.exchange.body, b"aaaa")
        self.exchange.send_body = original
        self.spool.resumeProducing()
        self.assertEqual(self.exchange.body, b"aaaabbbb")

    def test_stopped_spool_drops_everything_and_never_finishes(self):
        self.spool.pauseProducing()
        self.spool.write(b"x" * 25)
        self.spool.stopProducing()
        self.spool.finish()
        self.spool.resumeProducing()
        self.assertEqual(self.exchange.events, [])
