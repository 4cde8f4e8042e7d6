"""Recurring faults are logged once per interval, with the count of what was suppressed."""

import logging

from inspector.ratelimit import RateLimitedLog


def test_a_recurring_problem_is_logged_once_per_interval_with_a_count(caplog):
    limiter = RateLimitedLog(logging.getLogger("t"), interval_s=3600)
    with caplog.at_level(logging.WARNING):
        logged = [limiter.warning(("cam", "decode_failed"), f"frame {i} corrupt") for i in range(500)]
        limiter.warning(("cam", "empty_frame"), "empty")
    assert logged.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == ["frame 0 corrupt", "empty"]
    limiter.interval_s = 0
    with caplog.at_level(logging.WARNING):
        limiter.warning(("cam", "decode_failed"), "frame 500 corrupt")
    assert caplog.records[-1].getMessage() == "frame 500 corrupt (and 499 more like it in the last 0 s)"
