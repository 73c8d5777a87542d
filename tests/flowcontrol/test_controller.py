"""The flow controller: ordering, fairness, limits, TTLs, cancellation, shutdown, fast path."""

from __future__ import annotations

import asyncio

import pytest

from flowcontrol.helpers import FakeClock, SlotDetector, make_pool, req, settle, until
from igw.errors import DROP_REASON_HEADER, ErrorCode, InferenceError
from igw.flowcontrol import BandSettings, FlowControl, FlowControlSettings
from igw.flowcontrol.queues import EDF, ROUND_ROBIN


class Harness:
    """A controller over one pool whose saturation is ``busy / capacity`` slots.

    ``start`` queues admits as tasks; each admitted request takes a slot (as the scheduler's
    reservation would) and its name is appended to ``order``; ``free`` gives one slot back
    and tells the controller, as ``Pipeline.finish`` does through ``on_finish``.
    """

    def __init__(self, settings: FlowControlSettings | None = None, capacity: int = 1, **kw):
        self.pool = make_pool()
        self.detector = SlotDetector(capacity, busy=capacity)  # start saturated
        self.flow = FlowControl(settings, detector=self.detector, **kw)
        self.order: list[str] = []
        self.tasks: dict[str, asyncio.Task] = {}

    @property
    def controller(self):
        return self.flow.controller_for(self.pool)

    async def _admit(self, request) -> None:
        await self.flow.admit(request, self.pool)
        request.decision = object()  # type: ignore[assignment]  # the scheduler reserved
        self.detector.busy += 1
        self.order.append(request.request_id)

    async def start(self, *requests) -> None:
        for request in requests:
            self.tasks[request.request_id] = asyncio.create_task(self._admit(request))
            await settle(2)

    async def free(self, n: int = 1) -> None:
        for _ in range(n):
            before = len(self.order)
            self.detector.busy -= 1
            self.flow.notify(self.pool)
            await until(lambda before=before: len(self.order) > before)

    async def outcome(self, name: str) -> InferenceError:
        with pytest.raises(InferenceError) as info:
            await asyncio.wait_for(self.tasks[name], 2.0)
        return info.value


async def test_higher_priority_band_always_dispatches_first():
    h = Harness()
    await h.start(req("a", 0), req("b", 10), req("c", 0), req("d", 10), req("e", 5))
    await h.free(5)
    assert h.order == ["b", "d", "e", "a", "c"]


async def test_fcfs_orders_one_flow_by_arrival():
    h = Harness()
    await h.start(*(req(f"r{i}", 0) for i in range(5)))
    await h.free(5)
    assert h.order == ["r0", "r1", "r2", "r3", "r4"]


async def test_global_strict_serves_flows_in_arrival_order_without_fairness():
    h = Harness()
    await h.start(req("a1", flow="a"), req("a2", flow="a"), req("a3", flow="a"))
    await h.start(req("b1", flow="b"), req("c1", flow="c"))
    await h.free(5)
    assert h.order == ["a1", "a2", "a3", "b1", "c1"]


async def test_round_robin_alternates_between_fairness_ids():
    settings = FlowControlSettings(default_band=BandSettings(fairness=ROUND_ROBIN))
    h = Harness(settings)
    await h.start(req("a1", flow="a"), req("a2", flow="a"), req("a3", flow="a"))
    await h.start(req("b1", flow="b"), req("b2", flow="b"), req("c1", flow="c"))
    await h.free(6)
    assert h.order == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_round_robin_only_within_a_band_strict_priority_across_bands():
    settings = FlowControlSettings(default_band=BandSettings(fairness=ROUND_ROBIN))
    h = Harness(settings)
    await h.start(req("a1", 0, "a"), req("a2", 0, "a"), req("b1", 0, "b"), req("hi", 7, "a"))
    await h.free(4)
    assert h.order == ["hi", "a1", "b1", "a2"]


async def test_edf_orders_by_slo_header_then_ttl_deadline():
    clock = FakeClock()
    settings = FlowControlSettings(default_band=BandSettings(ordering=EDF), default_ttl=60)
    h = Harness(settings, clock=clock)
    slo = "x-llm-d-slo-ttft-ms"
    await h.start(req("slow", **{slo: "5000"}), req("urgent", **{slo: "100"}), req("none"))
    await h.start(req("legacy-header", **{"x-slo-ttft-ms": "1000"}), req("bad", **{slo: "x"}))
    await h.free(5)
    assert h.order == ["urgent", "legacy-header", "slow", "none", "bad"]


async def test_edf_deadline_counts_from_enqueue_time():
    clock = FakeClock()
    settings = FlowControlSettings(default_band=BandSettings(ordering=EDF), default_ttl=10)
    h = Harness(settings, clock=clock)
    await h.start(req("early"))  # deadline 1010
    clock.now += 5
    await h.start(req("late", **{"x-llm-d-slo-ttft-ms": "6000"}))  # deadline 1011
    clock.now += 1
    await h.start(req("tight", **{"x-llm-d-slo-ttft-ms": "1000"}))  # deadline 1007
    await h.free(3)
    assert h.order == ["tight", "early", "late"]


async def test_band_max_requests_rejects_with_429_rejected_saturated():
    settings = FlowControlSettings(bands={0: BandSettings(max_requests=2)})
    h = Harness(settings)
    await h.start(req("a"), req("b"), req("c"), req("other-band", 1))
    error = await h.outcome("c")
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED and error.http_status == 429
    assert error.headers[DROP_REASON_HEADER] == "rejected-saturated"
    assert h.controller.queued == 3  # a, b and the other band's request


async def test_band_max_bytes_counts_request_bodies():
    settings = FlowControlSettings(default_band=BandSettings(max_bytes=25))  # bodies are 10 B
    h = Harness(settings)
    await h.start(req("a"), req("b"), req("c"))
    assert (await h.outcome("c")).headers[DROP_REASON_HEADER] == "rejected-saturated"
    assert h.controller.queued_bytes == 20


async def test_global_max_requests_spans_bands():
    h = Harness(FlowControlSettings(max_requests=2))
    await h.start(req("a", 0), req("b", 5), req("c", 9))
    assert (await h.outcome("c")).http_status == 429
    assert h.controller.queued == 2


async def test_ttl_expiry_is_429_rejected_ttl_expired():
    clock = FakeClock()
    h = Harness(FlowControlSettings(default_ttl=10), clock=clock)
    await h.start(req("old"))
    clock.now += 5
    await h.start(req("young"))
    clock.now += 6  # old is 11 s in the queue, young 6 s
    h.flow.notify(h.pool)
    error = await h.outcome("old")
    assert error.http_status == 429
    assert error.headers[DROP_REASON_HEADER] == "rejected-ttl-expired"
    assert not h.tasks["young"].done()
    assert h.controller.queued == 1


async def test_expiry_with_an_empty_pool_is_503_rejected_no_endpoints():
    clock = FakeClock()
    h = Harness(FlowControlSettings(no_endpoint_ttl=5), clock=clock)
    h.pool.remove("10.0.0.1:8000")
    await h.start(req("waiting"))
    assert not h.tasks["waiting"].done()  # the waiting room for scale-from-zero
    clock.now += 6
    h.flow.notify(h.pool)
    error = await h.outcome("waiting")
    assert error.http_status == 503
    assert error.headers[DROP_REASON_HEADER] == "rejected-no-endpoints"


async def test_request_waiting_for_endpoints_is_dispatched_when_one_appears():
    h = Harness(FlowControlSettings(no_endpoint_ttl=30))
    h.pool.remove("10.0.0.1:8000")
    h.detector.busy = 0
    await h.start(req("waiting"))
    assert h.order == []
    h.pool.upsert("10.0.0.9:8000")
    await until(lambda: h.order == ["waiting"])  # picked up by the fallback tick


async def test_sheddable_request_with_no_endpoints_is_503_at_once():
    h = Harness()
    h.pool.remove("10.0.0.1:8000")
    await h.start(req("batch", -1))
    error = await h.outcome("batch")
    assert error.http_status == 503
    assert error.headers[DROP_REASON_HEADER] == "rejected-no-endpoints"


async def test_sheddable_request_is_shed_with_429_when_saturated():
    h = Harness()
    await h.start(req("batch", -1))
    error = await h.outcome("batch")
    assert error.http_status == 429
    assert error.message == "system saturated, sheddable request dropped"
    assert h.controller.queued == 0


async def test_sheddable_request_is_shed_while_others_wait_even_below_saturation():
    h = Harness(capacity=2)
    await h.start(req("waiting", 0))
    h.detector.busy = 1  # room for one, but "waiting" is ahead
    await h.start(req("batch", -1))
    assert (await h.outcome("batch")).http_status == 429


async def test_sheddable_requests_queue_when_the_config_gives_them_a_band():
    settings = FlowControlSettings(default_negative_band=BandSettings())
    h = Harness(settings)
    await h.start(req("batch", -1), req("normal", 0))
    await h.free(2)
    assert h.order == ["normal", "batch"]


async def test_sheddable_request_passes_when_not_saturated():
    h = Harness()
    h.detector.busy = 0
    await h.start(req("batch", -1))
    await until(lambda: h.order == ["batch"])


async def test_fast_path_admits_without_yielding_to_the_event_loop():
    h = Harness()
    h.detector.busy = 0
    coroutine = h.flow.admit(req("now"), h.pool)
    with pytest.raises(StopIteration):
        coroutine.send(None)  # finished in one step: no queue, no task switch
    assert h.controller.fast_path == 1
    assert h.controller._task is None  # no dispatcher was started


async def test_arrivals_queue_behind_waiting_requests_even_below_saturation():
    h = Harness(FlowControlSettings(tick=30.0), capacity=2)
    await h.start(req("first"))
    h.detector.busy = 1  # room appears; the dispatcher has not run yet
    await h.start(req("second"))  # below saturation, but must not overtake "first"
    await until(lambda: h.order == ["first"])
    assert h.controller.fast_path == 0 and h.controller.queued == 1
    await h.free(1)
    assert h.order == ["first", "second"]


async def test_cancel_while_queued_removes_the_item():
    h = Harness()
    await h.start(req("gone"), req("stays"))
    h.tasks["gone"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.tasks["gone"]
    assert h.controller.queued == 1 and h.controller.queued_bytes == 10
    await h.free(1)
    assert h.order == ["stays"]


async def test_many_cancellations_leave_bounded_state():
    h = Harness()
    for round_ in range(3):
        names = [f"r{round_}-{i}" for i in range(150)]
        for name in names:
            h.tasks[name] = asyncio.create_task(h._admit(req(name, flow=name)))
        await settle(3)
        for name in names:
            h.tasks[name].cancel()
        await asyncio.gather(*(h.tasks[n] for n in names), return_exceptions=True)
    controller = h.controller
    assert controller.queued == 0 and controller.queued_bytes == 0
    assert controller.bands == {}  # dynamic band dropped once empty
    assert len(controller._expiry) <= 64 + 1


async def test_shutdown_rejects_queued_and_new_requests_with_503():
    h = Harness()
    await h.start(req("queued"))
    await h.flow.close()
    error = await h.outcome("queued")
    assert error.http_status == 503
    assert error.headers[DROP_REASON_HEADER] == "rejected-shutting-down"
    with pytest.raises(InferenceError) as info:
        await h.flow.admit(req("late"), h.pool)
    assert info.value.headers[DROP_REASON_HEADER] == "rejected-shutting-down"


async def test_finish_of_an_admitted_request_wakes_the_dispatcher():
    h = Harness(FlowControlSettings(tick=30.0))  # the fallback tick would be far too slow
    h.detector.busy = 0
    first = req("first")
    await h.flow.admit(first, h.pool)
    h.detector.busy = 1
    await h.start(req("queued"))
    h.detector.busy = 0
    h.flow.on_finish(first)  # what Pipeline.finish runs after the account stage
    await until(lambda: h.order == ["queued"], timeout=1.0)


async def test_one_controller_per_pool():
    flow = FlowControl(detector=SlotDetector(1, busy=0))
    a, b = make_pool(name="a"), make_pool(name="b")
    assert flow.controller_for(a) is flow.controller_for(a)
    assert flow.controller_for(a) is not flow.controller_for(b)


async def test_pending_releases_are_passed_to_the_detector():
    class Gate:
        """Saturated until opened; then room for exactly two unreserved releases."""

        def __init__(self) -> None:
            self.open = False
            self.seen: list[int] = []

        def saturation(self, pool, request=None, pending: int = 0) -> float:
            self.seen.append(pending)
            if not self.open:
                return 1.0
            return 0.0 if pending < 2 else 1.0

    pool, gate = make_pool(), Gate()
    flow = FlowControl(detector=gate)
    tasks = [asyncio.create_task(flow.admit(req(f"r{i}"), pool)) for i in range(3)]
    await settle(3)
    gate.open = True
    flow.notify(pool)
    await until(lambda: sum(t.done() for t in tasks) == 2)
    await settle(10)
    assert sum(t.done() for t in tasks) == 2  # released requests never reserved a slot
    assert max(gate.seen) == 2
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_released_request_cancelled_before_it_runs_stops_counting_as_pending():
    h = Harness()
    await h.start(req("a"))
    h.detector.busy = 0
    assert h.controller.dispatch_once()  # released: its future is resolved...
    h.tasks["a"].cancel()  # ...but the client leaves before the request runs
    with pytest.raises(asyncio.CancelledError):
        await h.tasks["a"]
    assert h.controller._prune_pending() == 0
    assert h.order == []


async def test_a_failing_detector_admits_instead_of_holding_traffic(caplog):
    class Broken:
        def saturation(self, pool, request=None, pending=0):
            raise RuntimeError("bug")

    flow = FlowControl(detector=Broken())
    pool = make_pool()
    await asyncio.wait_for(flow.admit(req("a"), pool), 1.0)
    await asyncio.wait_for(flow.admit(req("b"), pool), 1.0)
    assert sum("saturation detector failed" in r.message for r in caplog.records) == 1


async def test_concurrency_bound_skips_readings_far_from_saturation():
    from igw.flowcontrol import ConcurrencyDetector

    class Counting(ConcurrencyDetector):
        readings = 0

        def saturation(self, pool, request=None, pending=0):
            Counting.readings += 1
            return super().saturation(pool, request, pending)

    pool = make_pool()
    flow = FlowControl(FlowControlSettings(tick=60.0), detector=Counting(max_concurrency=10))
    for i in range(10):
        await flow.admit(req(f"r{i}"), pool)  # nothing reserves: the pool stays empty
    assert Counting.readings == 2  # one reading, nine proven by the bound, then a new one


async def test_concurrency_bound_never_admits_past_capacity():
    from igw.flowcontrol import ConcurrencyDetector

    pool = make_pool()
    endpoint = pool.endpoints()[0]
    flow = FlowControl(
        FlowControlSettings(tick=60.0), detector=ConcurrencyDetector(max_concurrency=10)
    )
    admitted = 0

    async def admit_and_reserve(request):
        nonlocal admitted
        await flow.admit(request, pool)
        pool.table.add_inflight(endpoint.id, 1, 0)  # what the scheduler's pick does
        admitted += 1

    tasks = [asyncio.create_task(admit_and_reserve(req(f"r{i}"))) for i in range(15)]
    await settle(20)
    assert admitted == 10 and flow.controller_for(pool).queued == 5
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
