"""``/metrics`` under each engine type reads correctly with the gateway's own extractors."""

from __future__ import annotations

import pytest

from igw.sim import SimFleet

engines = pytest.importorskip("igw.datalayer.engines")


@pytest.mark.parametrize("engine_type", ["vllm", "sglang", "trtllm-serve"])
async def test_metrics_page_feeds_the_gateway_extractor_of_its_engine(http, engine_type):
    body = {"prompt": "x" * 400, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    sim = SimFleet(1, speed=10, engine_type=engine_type, block_size=32, num_gpu_blocks=777)
    async with sim as fleet:
        base = fleet.urls[0]
        async with http.post(base + "/v1/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            async with http.get(base + "/metrics") as page:
                raw = await page.read()
            resp.close()
    scraped = engines.extract(engines.ENGINES[engine_type], raw)
    assert (scraped.running, scraped.waiting) == (1, 0)
    assert scraped.kv_util == pytest.approx(4 / 777)  # 101 tokens -> 4 blocks of 32
    assert (scraped.block_size, scraped.num_blocks) == (32, 777)


def test_unknown_engine_type_is_rejected():
    with pytest.raises(ValueError, match="engine_type"):
        SimFleet(1, engine_type="tgi")
