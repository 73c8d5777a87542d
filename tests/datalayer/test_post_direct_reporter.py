"""With one pool, the data layer itself takes the response outcomes the router would have
routed to it (ModelRouter.response_reporter): for members, removed endpoints, an endpoint
replaced at the same address and one of another pool, both record the same outcomes."""

from __future__ import annotations

from igw.datalayer import DataLayer
from igw.datastore import Pool
from igw.gateway.routing import ModelRouter, PoolRuntime


def _counts(layer: DataLayer, pool: Pool) -> dict[str, tuple[int, int]]:
    now = layer._clock()
    out = {}
    for endpoint in pool.endpoints():
        state = layer.state(endpoint)
        if state is not None:
            out[endpoint.address] = state.outcomes.counts(now)
    return out


async def test_the_data_layer_records_what_the_router_would_have_sent_it(pool):
    layer = DataLayer(pool, interval=3600.0, timeout=0.2)
    await layer.start()
    try:
        router = ModelRouter([PoolRuntime(pool, datalayer=layer)])
        direct = router.response_reporter()
        assert direct is layer
        member = pool.upsert("127.0.0.1:9")
        gone = pool.upsert("127.0.0.1:10")
        pool.remove(gone.address)
        old = pool.upsert("127.0.0.1:11")
        pool.remove(old.address)
        pool.upsert("127.0.0.1:11")  # a new endpoint where ``old`` was
        stranger = Pool("other").upsert("127.0.0.1:9")  # same address and id, other pool
        for endpoint, ok in [(member, True), (gone, False), (old, False), (stranger, False),
                             (member, False)]:  # fmt: skip
            before = _counts(layer, pool)
            router.report_response(endpoint, ok)
            via_router = _counts(layer, pool)
            direct.report_response(endpoint, ok)
            via_layer = _counts(layer, pool)
            changed_by_router = {a: c for a, c in via_router.items() if before[a] != c}
            changed_by_layer = {
                a: (c[0] - via_router[a][0], c[1] - via_router[a][1])
                for a, c in via_layer.items()
                if via_router[a] != c
            }
            expected = {
                a: (c[0] - before[a][0], c[1] - before[a][1]) for a, c in changed_by_router.items()
            }
            assert changed_by_layer == expected, endpoint.address
        assert _counts(layer, pool)["127.0.0.1:9"] == (2, 4)  # member: two of each
        assert _counts(layer, pool)["127.0.0.1:11"] == (0, 0)  # the new one heard nothing
    finally:
        await layer.stop()
