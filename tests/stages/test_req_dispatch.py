"""Stage dispatch: stages configured to do nothing are left out of the gateway's pipeline,
and the legacy flow-control stage does nothing for a request it cannot shed."""

from __future__ import annotations

import random

import pytest

from igw.datastore import Pool
from igw.errors import ErrorCode, InferenceError
from igw.gateway.app import Gateway
from igw.pipeline import Request
from igw.stages import AdmitStage, FlowControlStage, GuardStage, active_stages, build_pipeline


class Engine:
    def schedule(self, request, pool, *, k=None):
        raise AssertionError("not called in these tests")

    def release(self, decision) -> None:
        pass


class Check:
    async def check(self, request) -> None:
        pass


def names(stages) -> list[str]:
    return [stage.name for stage in stages]


def test_empty_admit_and_guard_seams_are_left_out_and_the_order_kept():
    pipeline = build_pipeline(Engine(), Pool("p"), rng=random.Random(1))
    assert names(active_stages(pipeline.stages)) == ["parse", "route", "flowcontrol", "schedule"]


def test_seams_with_checks_stay_in_place():
    pipeline = build_pipeline(
        Engine(), Pool("p"), rng=random.Random(1), admit_checks=[Check()], guard_checks=[Check()]
    )
    assert names(active_stages(pipeline.stages)) == [
        "parse", "admit", "guard.in", "route", "flowcontrol", "schedule"]  # fmt: skip


def test_only_one_empty_seam_is_left_out_when_the_other_has_checks():
    stages = [AdmitStage([]), GuardStage([Check()])]
    assert names(active_stages(stages)) == ["guard.in"]


def test_the_gateway_runs_the_standard_pipeline_without_its_empty_seams():
    pipeline = build_pipeline(Engine(), Pool("p"), rng=random.Random(1))
    gateway = Gateway(pipeline, models=lambda: [])
    assert names(gateway.pipeline.stages) == ["parse", "route", "flowcontrol", "schedule"]


def _no_pool(request: Request) -> Pool:
    raise InferenceError(ErrorCode.NOT_FOUND, "no pool for this model")


async def test_legacy_flow_control_passes_priority_0_without_looking_up_its_pool():
    await FlowControlStage(_no_pool).process(Request("r", priority=0))


async def test_legacy_flow_control_looks_up_the_pool_of_a_sheddable_request():
    with pytest.raises(InferenceError, match="no pool for this model"):
        await FlowControlStage(_no_pool).process(Request("r", priority=-1))


async def test_a_flow_controller_sees_every_request_with_its_pool():
    pool = Pool("p")
    admitted = []

    class Controller:
        async def admit(self, request, pool) -> None:
            admitted.append((request.priority, pool))

    stage = FlowControlStage(lambda _r: pool, controller=Controller())
    await stage.process(Request("r", priority=0))
    await stage.process(Request("r", priority=-1))
    assert admitted == [(0, pool), (-1, pool)]
