"""Durations and sizes: the unit grammars of CONFIG.md."""
import pytest

from gateway.config.units import parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
    ],
)
def test_duration_forms_give_float_seconds(text, seconds):
    """Every documented duration form becomes float seconds."""
    result = parse_duration(text)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "value, shown",
    [
        ("10x", '"10x"'),
        ("s", '"s"'),
        ("", '""'),
        ("10 s", '"10 s"'),
        ("1s1", '"1s1"'),
        ("-1s", '"-1s"'),
        (True, "true"),
        ([1], "[1]"),
    ],
)
def test_bad_durations_are_refused_with_the_value_shown(value, shown):
    """The message says what a duration looks like and shows the value as written."""
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == (
        'must be a duration like "500ms", "10s", "5m", "1h", "1d", "1m30s" or a number '
        f"of seconds, got {shown}"
    )


def test_negative_number_of_seconds_is_refused():
    """A negative number is not a duration."""
    with pytest.raises(ValueError) as caught:
        parse_duration(-1)
    assert str(caught.value) == (
        'must be a duration like "500ms", "10s", "5m", "1h", "1d", "1m30s" or a number '
        "of seconds (not negative), got -1"
    )


@pytest.mark.parametrize(
    "text, size",
    [
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("1m", 1024 * 1024),
        ("1M", 1024 * 1024),
        ("10g", 10 * 1024**3),
        ("10G", 10 * 1024**3),
        ("100", 100),
        (0, 0),
        (4096, 4096),
    ],
)
def test_size_forms_give_int_bytes(text, size):
    """Sizes are case-insensitive k/m/g multiples of 1024, or bytes."""
    result = parse_size(text)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    "value, shown",
    [("1t", '"1t"'), ("k", '"k"'), ("1.5m", '"1.5m"'), (1.5, "1.5"), (False, "false"),
     ("1 m", '"1 m"')],
)
def test_bad_sizes_are_refused_with_the_value_shown(value, shown):
    """The message says what a size looks like and shows the value as written."""
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == (
        f'must be a size like "512k", "1m", "10g" or a number of bytes, got {shown}'
    )


def test_negative_size_is_refused():
    with pytest.raises(ValueError) as caught:
        parse_size(-5)
    assert str(caught.value) == (
        'must be a size like "512k", "1m", "10g" or a number of bytes (not negative), '
        "got -5"
    )
