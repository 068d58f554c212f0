"""Reason phrases and error pages match nginx's bytes, with "gateway" for "nginx"."""
from gateway.http.errors import error_page, reason_phrase, status_line


def test_404_page_is_nginx_page_with_gateway_signature():
    assert error_page(404) == (
        b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
        b"<center><h1>404 Not Found</h1></center>\r\n"
        b"<hr><center>gateway</center>\r\n</body>\r\n</html>\r\n"
    )


def test_pages_use_nginx_titles_where_they_differ_from_iana():
    assert b"<title>408 Request Time-out</title>" in error_page(408)
    assert b"<title>503 Service Temporarily Unavailable</title>" in error_page(503)
    assert b"<title>302 Found</title>" in error_page(302)
    assert b"<title>401 Authorization Required</title>" in error_page(401)


def test_statuses_without_an_nginx_page_have_an_empty_body():
    assert error_page(204) == b""
    assert error_page(418) == b""


def test_reason_phrases_are_nginx_status_lines():
    assert reason_phrase(302) == b"Moved Temporarily"
    assert reason_phrase(405) == b"Not Allowed"
    assert reason_phrase(504) == b"Gateway Time-out"


def test_unknown_to_nginx_falls_back_to_iana_phrase_or_empty():
    assert reason_phrase(418) == b"I'm a Teapot"
    assert reason_phrase(599) == b""


def test_status_line_with_explicit_reason():
    assert status_line(b"HTTP/1.1", 200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(b"HTTP/1.1", 200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
