import logging
from datetime import UTC, datetime, timedelta

from billing import progress
from billing.progress import LogProgress

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=10)


def test_percent_follows_the_oldest_start_reached_newest_first():
    bar = progress.Progress(label="x", start=START, end=END)
    bar.advance(traces=5, position=END - timedelta(days=1))
    assert (bar.traces, round(bar.percent)) == (5, 10)
    bar.advance(traces=5, position=END - timedelta(days=9))
    assert (bar.traces, round(bar.percent)) == (10, 90)
    bar.advance(traces=0, position=None)
    assert round(bar.percent) == 90


def test_logs_rate_and_percent_at_most_every_interval(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0)
    caplog.set_level(logging.INFO, logger="billing.sync")
    with LogProgress(label="sync acme", start=START, end=END) as bar:
        bar.advance(traces=100, position=END - timedelta(days=5))
    assert "sync acme: 50% of the window, 100 traces" in caplog.text
    assert "traces/s" in caplog.text


def test_a_quiet_run_still_logs_a_heartbeat(caplog, monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.01)
    caplog.set_level(logging.INFO, logger="billing.sync")
    with LogProgress(label="sync acme", start=START, end=END) as bar:
        bar._stop.wait(0.2)
    assert "sync acme: still running" in caplog.text
