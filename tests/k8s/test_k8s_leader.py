"""Lease-based leader election against the fake API server: one leader, hand-over, expiry."""

from __future__ import annotations

import asyncio

import pytest

from igw.k8s import ClusterConfig, KubeClient
from igw.k8s.leader import LeaderElector

from .conftest import eventually
from .fake_apiserver import LEASE

TIMING = {"lease_duration": 0.6, "renew_deadline": 0.4, "retry_period": 0.05}


@pytest.fixture
async def electors(api):
    made: list[tuple[LeaderElector, KubeClient]] = []

    def make(identity: str, **timing) -> LeaderElector:
        client = KubeClient(ClusterConfig(server=api.url, token=api.token))
        elector = LeaderElector(client, "default", "igw-epp-p", identity, **{**TIMING, **timing})
        made.append((elector, client))
        return elector

    yield make
    for elector, client in made:
        await elector.stop()
        await client.close()


async def test_one_replica_leads_and_the_other_follows(api, electors):
    first, second = electors("epp-a"), electors("epp-b")
    first.start()
    await eventually(lambda: first.is_leader, what="first leads")
    second.start()
    await asyncio.sleep(0.3)  # several rounds of both
    assert first.is_leader and not second.is_leader
    lease = api.objects[LEASE][("default", "igw-epp-p")]
    assert lease["spec"]["holderIdentity"] == "epp-a"
    assert second.holder == "epp-a"


async def test_a_released_lease_is_taken_at_the_next_round(api, electors):
    first, second = electors("epp-a"), electors("epp-b", lease_duration=60, renew_deadline=30)
    first.start()
    await eventually(lambda: first.is_leader, what="first leads")
    second.start()
    await first.stop()  # releases
    await eventually(lambda: second.is_leader, timeout=1.0, what="hand-over well before 60 s")
    lease = api.objects[LEASE][("default", "igw-epp-p")]
    assert lease["spec"]["holderIdentity"] == "epp-b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_silent_leader_is_replaced_after_the_lease_duration(api, electors):
    first, second = electors("epp-a"), electors("epp-b")
    first.start()
    await eventually(lambda: first.is_leader, what="first leads")
    second.start()
    await asyncio.sleep(0.1)
    assert first._task is not None
    first._task.cancel()  # crashed: no more renewals, no release
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eventually(lambda: second.is_leader, timeout=3.0, what="take-over after expiry")
    assert loop.time() - started >= 0.3  # not before the lease could have expired
    assert not first.is_leader  # its renew deadline has passed too


async def test_two_replicas_racing_for_a_new_lease_give_one_leader(electors):
    first, second = electors("epp-a"), electors("epp-b")
    won = await asyncio.gather(first.try_acquire_or_renew(), second.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    assert first.is_leader != second.is_leader


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires(api, electors):
    leader = electors("epp-a")
    leader.start()
    await eventually(lambda: leader.is_leader, what="leads")
    api.forbid(LEASE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eventually(lambda: not leader.is_leader, timeout=2.0, what="steps down")
    assert loop.time() - started <= TIMING["lease_duration"]


def test_timings_must_be_ordered():
    client = KubeClient(ClusterConfig(server="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(client, "default", "l", "me", lease_duration=5, renew_deadline=10)
