"""When passes run: quiet periods, max wait, requests, retries, resync jitter, backoff
and stalls, on a fake clock."""

from __future__ import annotations

from reconciler.desired import DesiredPlugin
from reconciler.outcome import Outcome
from reconciler.plan import Load
from reconciler.retry import Backoff, Stalls
from reconciler.trigger import Trigger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trigger(clock: Clock, **kw) -> Trigger:
    return Trigger(kw.pop("debounce", 0.25), kw.pop("max_wait", 2.0),
                   kw.pop("resync", 60.0), clock=clock, rand=lambda: 0.5)


def test_a_request_is_due_at_once():
    clock = Clock()
    t = trigger(clock)
    t.request("start")
    wake = t.wait(max_block=0)
    assert wake is not None and wake.reasons == {"start"}
    assert t.wait(max_block=0) is None


def test_file_events_wait_for_a_quiet_period():
    clock = Clock()
    t = trigger(clock)
    t.file_event()
    clock.now += 0.2
    assert t.wait(max_block=0) is None
    t.file_event()  # the quiet period starts again
    clock.now += 0.2
    assert t.wait(max_block=0) is None
    clock.now += 0.06
    wake = t.wait(max_block=0)
    assert wake.reasons == {"file"} and wake.first_event_at == 100.0


def test_a_stream_of_events_cannot_delay_a_pass_past_max_wait():
    clock = Clock()
    t = trigger(clock)
    for _ in range(19):
        t.file_event()
        clock.now += 0.1
        assert t.wait(max_block=0) is None
    t.file_event()
    clock.now = 102.0  # 2.0 s after the first event, though the last was 0.1 s ago
    assert t.wait(max_block=0).reasons == {"file"}


def test_retry_and_resync_with_jitter():
    clock = Clock()
    t = trigger(clock)
    t.retry_in(3)
    clock.now += 3
    assert t.wait(max_block=0).reasons == {"retry"}
    clock.now += 60  # rand 0.5: exactly the interval
    assert t.wait(max_block=0).reasons == {"resync"}
    clock.now += 59
    assert t.wait(max_block=0) is None


def test_any_pass_restarts_the_resync_clock():
    clock = Clock()
    t = trigger(clock)
    clock.now += 50
    t.request("probe")
    t.wait(max_block=0)
    clock.now += 20
    assert t.wait(max_block=0) is None


def test_interrupt_ends_a_wait():
    t = Trigger()
    t.interrupt()
    assert t.wait(max_block=5) is None


def test_backoff_is_full_jitter_capped_and_resets():
    b = Backoff(0.5, 8.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 0.5
    assert Backoff(0.5, 8.0, rand=lambda: 0.0).next() == 0.05  # never a busy loop


def failed(message: str, config: str = "c0") -> Outcome:
    plugin = DesiredPlugin("/conf/a.json5", "a", "/lib/liba.so", config, "l0")
    return Outcome(Load(plugin, "new"), False, message)


def test_the_same_failure_five_times_stalls_until_the_file_changes():
    stalls = Stalls()
    for _ in range(4):
        stalls.record([failed("on_load failed")])
    assert stalls.holds() == ()
    stalls.record([failed("on_load failed")])
    assert [h.config_file for h in stalls.holds()] == ["/conf/a.json5"]
    assert "5 tries" in stalls.holds()[0].reason
    stalls.record([failed("on_load failed", config="c1")])  # an edit: a new key
    assert [h.config_sha256 for h in stalls.holds()] == ["c0"]  # the edited file is free
    stalls.clear()  # the node restarted
    assert stalls.holds() == ()


def test_a_different_reason_starts_counting_again():
    stalls = Stalls()
    for reason in ("a", "a", "a", "b", "b"):
        stalls.record([failed(reason)])
    assert stalls.holds() == ()


def test_a_report_wakes_the_loop_before_a_due_pass_and_its_request_joins_that_pass():
    clock = Clock()
    t = trigger(clock)
    t.request("start")
    t.report("the node lists a, b")
    assert t.wait(max_block=5) is None  # at once: the loop judges the report first
    assert t.take_reports() == ["the node lists a, b"]
    assert t.take_reports() == []
    t.request("probe")  # what the loop made of it
    assert t.wait(max_block=0).reasons == {"start", "probe"}  # one pass for both
