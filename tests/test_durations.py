import pytest

from osreapi.errors import InvalidValue
from osreapi.executor.durations import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [("48h", 172800), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5), ("0", 0), ("1.5s", 1.5),
     ("2h3m4s", 7384), ("10us", 1e-5), ("10µs", 1e-5), ("100ns", 1e-7), ("-1m", -60), (".5s", 0.5)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "", "h", "1x", "1h 30m", "s1", "1.2.3s", "--1s", "1d"])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidValue):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (90, "1m30s"), (3600, "1h0m0s"), (0.5, "500ms"), (1.5, "1.5s"), (2e-6, "2µs"),
     (47 * 3600 + 59 * 60 + 46.135436, "47h59m46.135436s"), (-60, "-1m0s"), (59.999999, "59.999999s")],
)
def test_format_duration_like_go(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text, size", [("1MiB", 1 << 20), ("100", 100), ("64KiB", 65536), ("2GiB", 2 << 30), ("1kb", 1000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5MiB", "MiB", "1 TB"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidValue):
        parse_size(text)
