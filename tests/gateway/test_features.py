"""Smaller features: learned model names, mirroring, model priorities, TCP_NODELAY upstream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from igw.gateway.config import parse_config
from igw.gateway.runtime import ModelPriorityStage
from igw.gateway.serve import ServeOptions, start_stack
from igw.pipeline import Request


async def test_endpoints_mode_learns_model_names_from_the_replicas(replicas, client):
    replicas[0].behaviour.model = "llama-3-8b"
    replicas[1].behaviour.model = "llama-3-8b"
    urls = ", ".join(f"'{r.url}'" for r in replicas[:2])
    stack = await start_stack(parse_config(f"pools: {{default: {{endpoints: [{urls}]}}}}"),
                              ServeOptions(port=0))  # fmt: skip
    try:
        async with client.get(stack.url + "/v1/models") as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["llama-3-8b"]
        body = {"model": "llama-3-8b", "prompt": "hi"}
        async with client.post(stack.url + "/v1/completions", json=body) as response:
            assert response.status == 200
        body = {"model": "sim-model", "prompt": "hi"}
        async with client.post(stack.url + "/v1/completions", json=body) as response:
            assert response.status == 404
    finally:
        await stack.stop()


async def test_mirror_sends_a_copy_and_the_client_gets_the_real_answer(replicas, client):
    main, shadow = replicas[0], replicas[1]
    config = parse_config(
        f"pools: {{p: {{endpoints: ['{main.url}']}}}}\n"
        "models: {sim-model: {pool: p}}\n"
        f"mirror: [{{model: sim-model, url: '{shadow.url}', percent: 100}}]\n"
    )
    stack = await start_stack(config, ServeOptions(port=0))
    try:
        body = {"model": "sim-model", "prompt": "mirror me"}
        async with client.post(stack.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            assert response.headers["x-igw-endpoint"] == main.address
        for _ in range(100):
            if shadow.hits:
                break
            await asyncio.sleep(0.02)
        assert shadow.hits == 1
        assert shadow.bodies[0] == main.bodies[0]
        assert {k.lower(): v for k, v in shadow.headers[0].items()}["x-igw-mirror"] == "1"
    finally:
        await stack.stop()


@pytest.mark.parametrize(("objective", "expected"), [(None, 10), ("batch", -1)])
async def test_model_priority_applies_unless_an_objective_was_named(objective, expected):
    stage = ModelPriorityStage({"chatbot": 10})
    request = Request(request_id="r", incoming_model="chatbot")
    if objective is not None:  # as the parse stage leaves it after the objective header
        request.objective, request.priority = objective, -1
    await stage.process(request)
    assert request.priority == expected


async def test_upstream_connections_have_tcp_nodelay(replicas, client):
    from igw.gateway.upstream import UpstreamPool, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")
    pool = UpstreamPool()
    try:
        response = await pool.post(
            "127.0.0.1", replicas[0].port, "/v1/completions",
            [("content-type", "application/json")], b'{"model": "m", "prompt": "x"}',
        )  # fmt: skip
        assert response.status == 200
        await response.read()
        sock = response._conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        response.release()
        again = await pool.post(
            "127.0.0.1", replicas[0].port, "/v1/completions", [], b'{"model": "m", "prompt": "y"}'
        )
        assert again._conn.transport.get_extra_info("socket") is sock  # kept alive, reused
        await again.read()
        again.release()
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            b"hello",
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", b"hello"),  # until EOF
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"hello",
        ),
    ],
)
async def test_upstream_client_reads_every_body_framing(raw, expected):
    from igw.gateway.upstream import UpstreamPool, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        response = await pool.post("127.0.0.1", port, "/v1/completions", [], b"")
        assert await response.read() == expected
        response.release()
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_upstream_client_reports_a_body_cut_short_as_broken():
    from igw.gateway.upstream import UpstreamBrokenError, UpstreamPool, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        response = await pool.post("127.0.0.1", port, "/v1/completions", [], b"")
        with pytest.raises(UpstreamBrokenError):
            await response.read()
        response.close()
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
