"""The access log: each format's exact line, nginx escaping, buffering and destinations."""
from __future__ import annotations

import io
import json
import time

import pytest

from gateway.accesslog import JSON_VARIABLES, AccessLog, LogFormat
from gateway.config.model import GatewaySettings
from gateway.http.exchange import UpstreamState
from tests.http.test_variables import NOW, context, make_clock, make_exchange


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def finished_exchange(**kwargs):
    headers = kwargs.pop("headers", [
        (b"Host", b"example.com"), (b"User-Agent", b"curl/8.5.0"),
        (b"Referer", b"http://example.com/start"),
    ])
    defaults = dict(status=200, body_bytes_sent=612, bytes_sent=850,
                    start_time=NOW - 0.042)
    defaults.update(kwargs)
    return make_exchange(headers, **defaults)


def one_line(fmt: str, exchange, **settings) -> str:
    stream = io.BytesIO()
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log_format=fmt, **settings), clock,
                           stream)
    access_log.log(exchange)
    access_log.close()
    return stream.getvalue().decode("utf-8")


COMBINED_LINE = ('192.0.2.7 - - [21/Nov/2026:21:01:58 +0000] "GET /x?a=1&B=2 HTTP/1.1" '
                 '200 612 "http://example.com/start" "curl/8.5.0"')


def test_combined_format():
    assert one_line("combined", finished_exchange()) == COMBINED_LINE + "\n"


def test_combined_prints_a_dash_for_empty_values():
    exchange = finished_exchange(headers=[(b"Host", b"example.com")])
    assert one_line("combined", exchange) == (
        '192.0.2.7 - - [21/Nov/2026:21:01:58 +0000] "GET /x?a=1&B=2 HTTP/1.1" '
        '200 612 "-" "-"\n')


def test_upstream_format():
    state = UpstreamState(addrs=["10.0.0.1:3000", "10.0.0.2:3000"],
                          statuses=["502", "200"], response_times=["0.001", "0.030"])
    exchange = finished_exchange(variables={"upstream": state})
    assert one_line("upstream", exchange) == (
        COMBINED_LINE + " upstream=10.0.0.1:3000, 10.0.0.2:3000 upstream_status=502, 200"
        " upstream_response_time=0.001, 0.030 request_time=0.042\n")


def test_upstream_format_without_an_upstream():
    exchange = finished_exchange(status=403, body_bytes_sent=153)
    assert one_line("upstream", exchange) == (
        '192.0.2.7 - - [21/Nov/2026:21:01:58 +0000] "GET /x?a=1&B=2 HTTP/1.1" '
        '403 153 "http://example.com/start" "curl/8.5.0"'
        " upstream=- upstream_status=- upstream_response_time=- request_time=0.042\n")


def test_custom_format():
    exchange = finished_exchange(variables={"upstream": UpstreamState(addrs=["app"])})
    assert one_line("$request_method ${uri} $status rt=$request_time up=$upstream_addr"
                    " id=$request_id", exchange) == (
        "GET /x 200 rt=0.042 up=app id=0123456789abcdef0123456789abcdef\n")


def test_values_are_escaped_as_nginx_does():
    """``"``, ``\\``, control bytes and bytes >= 0x7F become ``\\xHH``; the rest,
    spaces included, are kept."""
    exchange = finished_exchange(headers=[
        (b"User-Agent", 'a "quoted" \\ tab\there caf\xc3\xa9\x7f'.encode("latin-1")),
    ])
    assert one_line('"$http_user_agent"', exchange) == (
        '"a \\x22quoted\\x22 \\x5C tab\\x09here caf\\xC3\\xA9\\x7F"\n')


def test_literal_format_text_is_not_escaped():
    assert one_line('"quoted" $status', finished_exchange()) == '"quoted" 200\n'


def test_json_format_has_every_simple_variable():
    state = UpstreamState(addrs=["10.0.0.1:3000"], statuses=["200"],
                          response_times=["0.030"])
    exchange = finished_exchange(variables={"upstream": state, "proxy_host": "app"})
    line = one_line("json", exchange)
    assert line.endswith("}\n") and line.count("\n") == 1
    record = json.loads(line)
    assert list(record) == list(JSON_VARIABLES)
    assert record["time_local"] == "21/Nov/2026:21:01:58 +0000"
    assert record["time_iso8601"] == "2026-11-21T21:01:58+00:00"
    assert record["request"] == "GET /x?a=1&B=2 HTTP/1.1"
    assert record["status"] == "200"
    assert record["remote_addr"] == "192.0.2.7"
    assert record["upstream_addr"] == "10.0.0.1:3000"
    assert record["upstream_status"] == "200"
    assert record["request_time"] == "0.042"
    assert record["proxy_host"] == "app"
    assert record["remote_user"] == ""          # empty, not "-"
    assert record["ssl_protocol"] == ""


def test_json_format_line_starts_exactly():
    line = one_line("json", finished_exchange())
    assert line.startswith('{"time_local":"21/Nov/2026:21:01:58 +0000",'
                           '"time_iso8601":"2026-11-21T21:01:58+00:00",'
                           '"msec":"1795294918.000",'
                           '"request_id":"0123456789abcdef0123456789abcdef",'
                           '"connection":"","remote_addr":"192.0.2.7",'
                           '"remote_port":"51234","remote_user":"",')


def test_json_escaping_follows_nginx_escape_json():
    fmt = LogFormat('{"ua":"$http_user_agent"}', json=True)
    exchange = make_exchange([(b"User-Agent", 'q" b\\ n\n t\t c\x01 é'.encode())])
    line = fmt.render(context(exchange))
    assert line == b'{"ua":"q\\" b\\\\ n\\n t\\t c\\u0001 \xc3\xa9"}'
    assert json.loads(line) == {"ua": 'q" b\\ n\n t\t c\x01 é'}


def test_lines_are_buffered_until_a_second_has_passed():
    stream = io.BytesIO()
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log_format="$status"), clock, stream)
    access_log.log(finished_exchange(status=200))
    access_log.log(finished_exchange(status=404))
    assert stream.getvalue() == b""
    assert len(clock.getDelayedCalls()) == 1          # one timer, not one per line
    clock.advance(0.999)
    assert stream.getvalue() == b""
    clock.advance(0.001)
    assert stream.getvalue() == b"200\n404\n"
    assert clock.getDelayedCalls() == []
    access_log.log(finished_exchange(status=500))
    clock.advance(1.0)
    assert stream.getvalue() == b"200\n404\n500\n"


def test_a_full_buffer_is_written_at_once():
    stream = io.BytesIO()
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log_format="$http_x_big"), clock,
                           stream)
    exchange = finished_exchange(headers=[(b"X-Big", b"x" * 40_000)])
    access_log.log(exchange)
    assert stream.getvalue() == b""
    access_log.log(exchange)
    assert len(stream.getvalue()) == 2 * 40_001
    assert clock.getDelayedCalls() == []


def test_close_flushes_and_cancels_the_timer():
    stream = io.BytesIO()
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log_format="$status"), clock, stream)
    access_log.log(finished_exchange())
    access_log.close()
    assert stream.getvalue() == b"200\n"
    assert clock.getDelayedCalls() == []
    access_log.log(finished_exchange())               # ignored after close
    assert stream.getvalue() == b"200\n"


def test_text_streams_are_accepted():
    stream = io.StringIO()
    access_log = AccessLog(GatewaySettings(access_log_format="$status $uri"),
                           make_clock(), stream)
    access_log.log(finished_exchange())
    access_log.flush()
    assert stream.getvalue() == "200 /x\n"


def test_disabled_log_does_nothing():
    stream = io.BytesIO()
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log=None), clock, stream)
    access_log.log(finished_exchange())
    access_log.close()
    assert stream.getvalue() == b""
    assert clock.getDelayedCalls() == []


def test_a_path_is_appended_to(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"old line\n")
    clock = make_clock()
    access_log = AccessLog(GatewaySettings(access_log=str(path),
                                           access_log_format="$status"), clock)
    access_log.log(finished_exchange())
    assert path.read_bytes() == b"old line\n"
    clock.advance(1)
    assert path.read_bytes() == b"old line\n200\n"
    access_log.log(finished_exchange(status=304))
    access_log.close()
    assert path.read_bytes() == b"old line\n200\n304\n"


def test_reopen_follows_log_rotation(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog(GatewaySettings(access_log=str(path),
                                           access_log_format="$status"), make_clock())
    access_log.log(finished_exchange())
    path.rename(tmp_path / "access.log.1")
    access_log.reopen()
    access_log.log(finished_exchange(status=204))
    access_log.close()
    assert (tmp_path / "access.log.1").read_bytes() == b"200\n"
    assert path.read_bytes() == b"204\n"


def test_dash_writes_to_the_real_stdout(capfd):
    access_log = AccessLog(GatewaySettings(access_log="-", access_log_format="$status"),
                           make_clock())
    access_log.log(finished_exchange())
    access_log.close()
    assert capfd.readouterr().out == "200\n"


def test_a_handlers_context_can_be_reused():
    """The proxy passes its own context (e.g. a trusted one) instead of a fresh one."""
    stream = io.BytesIO()
    access_log = AccessLog(GatewaySettings(access_log_format="$proxy_add_x_forwarded_for"),
                           make_clock(), stream)
    exchange = finished_exchange(headers=[(b"X-Forwarded-For", b"10.9.8.7")])
    access_log.log(exchange, context(exchange, trusted=True))
    access_log.close()
    assert stream.getvalue() == b"10.9.8.7, 192.0.2.7\n"
