"""deploy/envoy/envoy.yaml is a valid Envoy bootstrap wired as the reference expects.

No Envoy on this machine: the file is parsed into ``envoy.config.bootstrap.v3.Bootstrap``
with every ``typed_config`` resolved to its message type (unknown fields, enum values or
types fail), then checked against the constants igw uses.
"""

from __future__ import annotations

from pathlib import Path

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

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


def bootstrap() -> bootstrap_pb2.Bootstrap:
    data = yaml.safe_load(CONFIG.read_text())
    return json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def _filters(boot: bootstrap_pb2.Bootstrap) -> dict[str, object]:
    hcm = hcm_pb2.HttpConnectionManager()
    boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return {f.name: f for f in hcm.http_filters}


def test_envoy_bootstrap_parses_with_every_typed_config_resolved():
    boot = bootstrap()
    assert {c.name for c in boot.static_resources.clusters} == {
        "original_destination_cluster",
        "ext_proc",
    }
    assert list(_filters(boot)) == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]


def test_ext_proc_filter_uses_the_reference_processing_mode():
    ext_proc = ext_proc_pb2.ExternalProcessor()
    _filters(bootstrap())["envoy.filters.http.ext_proc"].typed_config.Unpack(ext_proc)
    mode, pm = ext_proc.processing_mode, processing_mode_pb2.ProcessingMode
    assert (mode.request_header_mode, mode.response_header_mode) == (pm.SEND, pm.SEND)
    assert mode.request_body_mode == pm.FULL_DUPLEX_STREAMED
    assert mode.response_body_mode == pm.FULL_DUPLEX_STREAMED
    assert (mode.request_trailer_mode, mode.response_trailer_mode) == (pm.SEND, pm.SEND)
    assert ext_proc.grpc_service.envoy_grpc.cluster_name == "ext_proc"
    assert ext_proc.message_timeout.seconds == 1000


def test_upstream_cluster_routes_by_the_destination_header():
    clusters = {c.name: c for c in bootstrap().static_resources.clusters}
    original = clusters["original_destination_cluster"]
    assert original.original_dst_lb_config.use_http_header
    assert original.original_dst_lb_config.http_header_name == DESTINATION_KEY


def test_ext_proc_cluster_health_checks_the_ext_proc_service_on_port_9002():
    cluster = {c.name: c for c in bootstrap().static_resources.clusters}["ext_proc"]
    assert cluster.health_checks[0].grpc_health_check.service_name == SERVICE_NAME
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.port_value == 9002
