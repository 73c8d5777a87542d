"""A bounded, seeded storm of mixed requests: the server stays up and the engine ends clean."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from igw.sim import Faults, SimFleet


async def test_mixed_storm_with_disconnects_preemption_and_faults_leaves_no_residue(http):
    rng = random.Random(5)
    fleet = SimFleet(
        2, speed=50, loras=["fr", "es", "de"], max_lora=1, num_gpu_blocks=40, max_num_seqs=6,
        faults={1: Faults(error_rate=0.3)},
    )  # fmt: skip
    statuses: list[object] = []

    async def one(i: int, base: str) -> None:
        chat = rng.random() < 0.5
        model = rng.choice(["sim-model", "sim-model", "fr", "es", "de"])
        text = f"shared prefix {i % 3} " * rng.randint(1, 20) + str(i)
        body: dict = {"model": model, "max_tokens": rng.randint(1, 200), "ignore_eos": True,
                      "stream": rng.random() < 0.6}  # fmt: skip
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        path = "/v1/chat/completions" if chat else "/v1/completions"
        hang_up = rng.random() < 0.2
        try:
            async with http.post(base + path, json=body) as resp:
                if hang_up:
                    await resp.content.read(10)
                    resp.close()
                    statuses.append("hung up")
                    return
                await resp.read()
                statuses.append(resp.status)
        except aiohttp.ClientPayloadError:
            statuses.append("cut")

    async with fleet:
        await asyncio.wait_for(
            asyncio.gather(*(one(i, fleet.urls[i % 2]) for i in range(120))), timeout=30
        )
        for _ in range(200):  # let aborted requests drain
            if not any(r.engine.has_work() for r in fleet.replicas):
                break
            await asyncio.sleep(0.01)
        engines = [r.engine for r in fleet.replicas]
    assert len(statuses) == 120
    assert statuses.count(200) > 40
    assert set(statuses) <= {200, 500, "cut", "hung up"}
    assert engines[0].stats.preemptions + engines[1].stats.preemptions > 0
    for engine in engines:
        assert not engine.has_work()
        assert engine.cache.in_use == 0
        assert engine.running_loras() == []
