"""The generic cell rate algorithm, as tower_governor (and so snarkOS) limits requests:
one request every `interval` seconds, with `tolerance` seconds of burst. The node's
limiter (reference node) and our own pacer (node client) are the two sides of it, so
the algorithm is written once, as a pure function."""

from __future__ import annotations


def next_slot(tat: float, now: float, interval: float, tolerance: float) -> tuple[float, float]:
    """(how long a request at `now` must wait to conform, the theoretical arrival time
    after it is sent). A limiter refuses when the wait is positive and keeps `tat`; a
    pacer sleeps the wait and takes the new time."""
    start = max(tat, now)
    return start - tolerance - now, start + interval
