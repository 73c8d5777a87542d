"""deploy/envoy/envoy-observe.yaml: the two-filter deployment (routing + observer) is a valid
Envoy bootstrap, checked as test_envoy_config.py checks envoy.yaml (no Envoy on this machine:
parsed into ``Bootstrap`` with every ``typed_config`` resolved, then read field by field)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from igw.extproc.director import DESTINATION_KEY
from igw.extproc.service import SERVICE_NAME

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
PM = processing_mode_pb2.ProcessingMode


def bootstrap(name: str = "envoy-observe.yaml") -> bootstrap_pb2.Bootstrap:
    data = yaml.safe_load((DEPLOY / name).read_text())
    return json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def http_filters(boot: bootstrap_pb2.Bootstrap) -> list:
    hcm = hcm_pb2.HttpConnectionManager()
    boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return list(hcm.http_filters)


def ext_proc(name: str) -> ext_proc_pb2.ExternalProcessor:
    config = ext_proc_pb2.ExternalProcessor()
    [wanted] = [f for f in http_filters(bootstrap()) if f.name == name]
    assert wanted.typed_config.Unpack(config)
    return config


def test_observer_comes_after_the_routing_filter_and_before_the_router():
    names = [f.name for f in http_filters(bootstrap())]
    assert names == ["igw-route", "igw-observe", "envoy.filters.http.router"]


def test_routing_filter_streams_the_request_and_leaves_the_response_body_out():
    route = ext_proc("igw-route")
    mode = route.processing_mode
    assert not route.observability_mode
    assert (mode.request_header_mode, mode.response_header_mode) == (PM.SEND, PM.SEND)
    assert mode.request_body_mode == PM.FULL_DUPLEX_STREAMED
    assert mode.response_body_mode == PM.NONE
    assert (mode.request_trailer_mode, mode.response_trailer_mode) == (PM.SEND, PM.SEND)
    assert not route.failure_mode_allow


def test_observer_sends_and_goes_with_the_streamed_response():
    observe = ext_proc("igw-observe")
    mode = observe.processing_mode
    assert observe.observability_mode
    assert (mode.request_header_mode, mode.response_header_mode) == (PM.SEND, PM.SEND)
    assert mode.request_body_mode == PM.NONE
    assert mode.response_body_mode == PM.STREAMED  # the only body mode observability allows
    assert mode.response_trailer_mode == PM.SEND
    assert observe.failure_mode_allow  # an observer that is down never fails a request
    assert list(observe.metadata_options.forwarding_namespaces.untyped) == ["envoy.lb"]


@pytest.mark.parametrize(
    ("name", "cluster"), [("igw-route", "ext_proc"), ("igw-observe", "igw_observe")]
)
def test_routing_calls_the_ext_proc_port_and_observing_the_observer_port(name, cluster):
    assert ext_proc(name).grpc_service.envoy_grpc.cluster_name == cluster


def test_clusters_are_those_of_the_single_filter_bootstrap_plus_the_observer_port():
    observe = {c.name: c for c in bootstrap().static_resources.clusters}
    single = {c.name: c for c in bootstrap("envoy.yaml").static_resources.clusters}
    observer = observe.pop("igw_observe")
    assert observe == single
    original = observe["original_destination_cluster"].original_dst_lb_config
    assert original.http_header_name == DESTINATION_KEY
    health = observe["ext_proc"].health_checks[0].grpc_health_check
    assert health.service_name == SERVICE_NAME
    # the observer cluster is the ext_proc cluster (TLS, h2, health check) on the observer port
    [endpoint] = observer.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert address.port_value == 9006
    observer.name = observer.load_assignment.cluster_name = "ext_proc"
    address.port_value = 9002
    assert observer == observe["ext_proc"]
