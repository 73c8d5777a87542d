"""ModelRouter.report_response sends a response's outcome to the data layer of the pool that
holds the endpoint now, and to no one for an endpoint no pool holds."""

from __future__ import annotations

from igw.datastore import Pool
from igw.gateway.routing import ModelRouter, PoolRuntime


class Layer:
    """A data layer that records the outcomes it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, bool]] = []

    def report_response(self, endpoint, ok: bool) -> None:
        self.heard.append((endpoint.address, ok))


def _two_pools():
    a, b = Layer(), Layer()
    pool_a, pool_b = Pool("a"), Pool("b")
    router = ModelRouter([PoolRuntime(pool_a, datalayer=a), PoolRuntime(pool_b, datalayer=b)])
    return router, pool_a, pool_b, a, b


def test_each_outcome_goes_to_the_layer_of_the_pool_holding_the_endpoint():
    router, pool_a, pool_b, a, b = _two_pools()
    first = pool_a.upsert("10.0.0.1:8000")
    second = pool_b.upsert("10.0.0.1:8000")  # the same address in another pool
    router.report_response(second, True)
    router.report_response(first, False)
    assert a.heard == [("10.0.0.1:8000", False)] and b.heard == [("10.0.0.1:8000", True)]


def test_a_removed_endpoint_is_not_reported():
    router, pool_a, _, a, b = _two_pools()
    gone = pool_a.upsert("10.0.0.2:8000")
    pool_a.remove(gone.address)
    router.report_response(gone, False)
    replaced = pool_a.upsert("10.0.0.2:8000")  # a new endpoint at the old address
    router.report_response(gone, False)
    assert a.heard == [] and b.heard == []
    router.report_failure(replaced)
    assert a.heard == [("10.0.0.2:8000", False)]


def test_an_endpoint_of_a_pool_without_a_data_layer_is_reported_to_no_other_pool():
    layer = Layer()
    bare, scraped = Pool("bare"), Pool("scraped")
    router = ModelRouter([PoolRuntime(bare), PoolRuntime(scraped, datalayer=layer)])
    scraped.upsert("10.0.0.3:8000")
    router.report_response(bare.upsert("10.0.0.3:8000"), False)
    assert layer.heard == []


def test_one_pool_reports_straight_to_its_data_layer():
    layer = Layer()
    router = ModelRouter([PoolRuntime(Pool("a"), datalayer=layer)])
    assert router.response_reporter() is layer


def test_several_pools_report_through_the_router():
    router, *_ = _two_pools()
    assert router.response_reporter() is router
    half = ModelRouter([PoolRuntime(Pool("a"), datalayer=Layer()), PoolRuntime(Pool("b"))])
    assert half.response_reporter() is half


def test_without_a_data_layer_nothing_takes_reports():
    router = ModelRouter([PoolRuntime(Pool("a")), PoolRuntime(Pool("b"))])
    assert router.response_reporter() is None
