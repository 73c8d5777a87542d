"""Command templates, port blocks and metric parsing used to drive the fleet."""

from __future__ import annotations

import socket

import pytest

from igw.bench import fleet


def test_expand_fills_placeholders_and_spreads_worker_lists() -> None:
    argv = fleet.expand(
        "{python} -m r --port {port} --worker-urls {workers} --csv {workers_csv}",
        {"python": "py", "port": "9", "workers": ["http://a", "http://b"], "workers_csv": "a,b"},
    )
    assert argv == [
        "py",
        "-m",
        "r",
        "--port",
        "9",
        "--worker-urls",
        "http://a",
        "http://b",
        "--csv",
        "a,b",
    ]


def test_expand_rejects_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match="nope"):
        fleet.expand("run --x {nope}", {"python": "py"})


def test_free_port_block_is_bindable() -> None:
    base = fleet.free_port_block(4)
    socks = [socket.socket() for _ in range(4)]
    try:
        for i, s in enumerate(socks):
            s.bind(("127.0.0.1", base + i))
    finally:
        for s in socks:
            s.close()


def test_parse_counters_sums_label_sets_of_vllm_counters() -> None:
    text = (
        "# TYPE vllm:request_success_total counter\n"
        'vllm:request_success_total{finished_reason="length",model_name="m"} 3\n'
        'vllm:request_success_total{finished_reason="stop",model_name="m"} 4\n'
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        'vllm:prefix_cache_hits_total{model_name="m"} 640\n'
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        'vllm:prefix_cache_queries_total{model_name="m"} 1000\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 2\n'
    )
    assert fleet.parse_counters(text) == {
        "vllm:request_success_total": 7.0,
        "vllm:prefix_cache_hits_total": 640.0,
        "vllm:prefix_cache_queries_total": 1000.0,
    }
