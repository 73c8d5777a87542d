"""``igw serve --endpoints`` learns model names and LoRA adapters from /v1/models."""

from __future__ import annotations

from igw.datalayer.testing import FakeModelServer
from igw.gateway.config import GatewayConfig, PoolSpec
from igw.gateway.serve import ServeOptions, start_stack


async def test_adapters_listed_with_a_parent_are_known_as_adapters():
    server = await FakeModelServer(
        models=["llm-base", "english-bot"], parents={"english-bot": "llm-base"}
    ).start()
    try:
        config = GatewayConfig(pools={"default": PoolSpec(endpoints=[f"http://{server.address}"])})
        stack = await start_stack(config, ServeOptions(port=0))
        try:
            runtime = stack.router.pools["default"]
            assert runtime.models == {"llm-base", "english-bot"}
            assert runtime.adapters == {"english-bot"}
            assert stack.router.is_adapter("english-bot")
            assert not stack.router.is_adapter("llm-base")
        finally:
            await stack.stop()
    finally:
        await server.stop()
