"""``igw epp --pool-name ... --kubeconfig`` as a process against the fake API server."""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from epp_harness import ENV, destination, route_once, stop_process, wait_for_metrics
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igw.datalayer.testing import FakeModelServer, vllm_page
from igw.extproc import command

from .conftest import eventually
from .fake_apiserver import OBJECTIVE, POD, POOL, inference_pool, objective, pod

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _isolated_env(home: Path) -> dict[str, str]:
    """No in-cluster variables, no $KUBECONFIG, an empty home: no configuration at all."""
    env = {k: v for k, v in ENV.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    env["HOME"] = str(home)
    return env


def _run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "igw", "epp", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pool_name_without_any_kubernetes_configuration_is_a_clear_error(tmp_path):
    result = _run("--pool-name", "p", env=_isolated_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--kubeconfig" in result.stderr and "--endpoints" in result.stderr


def _usage_error(monkeypatch, home: Path, *argv: str) -> str:
    """Run ``igw epp``'s start-up in this process; return its one-line usage error."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))
    parser = argparse.ArgumentParser(allow_abbrev=False)
    command.add_arguments(parser)
    with pytest.raises(command.UsageError) as info:
        asyncio.run(command._main(parser.parse_args(list(argv))))
    return str(info.value)


def test_kubeconfig_with_an_exec_plugin_names_the_field(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text(
        "current-context: c\nclusters: [{name: k, cluster: {server: 'https://10.0.0.1'}}]\n"
        "users: [{name: u, user: {exec: {command: aws}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    message = _usage_error(monkeypatch, tmp_path, "--pool-name=p", f"--kubeconfig={config}")
    assert "users[u].user.exec" in message


def test_endpoint_selector_needs_target_ports(tmp_path, monkeypatch):
    message = _usage_error(monkeypatch, tmp_path, "--endpoint-selector=app=vllm")
    assert "--endpoint-target-ports" in message


def test_pool_name_and_endpoint_selector_are_exclusive(tmp_path, monkeypatch):
    message = _usage_error(
        monkeypatch, tmp_path, "--pool-name=p", "--endpoint-selector=app=x",
        "--endpoint-target-ports=8000",
    )  # fmt: skip
    assert "mutually exclusive" in message


def test_set_based_endpoint_selector_is_rejected(tmp_path, monkeypatch):
    config = tmp_path / "kubeconfig"
    config.write_text(
        "current-context: c\nclusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    message = _usage_error(
        monkeypatch, tmp_path, "--endpoint-selector=app in (a,b)",
        "--endpoint-target-ports=8000", f"--kubeconfig={config}",
    )  # fmt: skip
    assert "only equality" in message


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=5
        )
        return reply.status


async def test_epp_watches_the_pool_becomes_ready_and_routes(tmp_path, api):
    idle = await FakeModelServer(vllm_page(waiting=0, kv_util=0.1, bulk=False)).start()
    busy = await FakeModelServer(vllm_page(waiting=30, kv_util=0.9, bulk=False)).start()
    api.apply(POD, pod("pod-0", "127.0.0.1", {"app": "vllm"}))
    api.apply(OBJECTIVE, objective("my-model", "pool-a", 2))
    api.forbid(POD)  # RBAC not granted yet
    config = api.kubeconfig(tmp_path / "kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "igw", "epp", "--pool-name=pool-a", "--pool-namespace=default",
        f"--kubeconfig={config}", "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0",
        "--secure-serving=false", "--refresh-metrics-interval=50ms", "--drain-timeout=1s",
        env=_isolated_env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stderr: list[str] = []

    async def drain() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            stderr.append(raw.decode(errors="replace"))

    drainer = asyncio.create_task(drain())
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"\(plaintext\), health on :(\d+), metrics on :(\d+)", line)
        assert match and "watching Kubernetes" in line, line
        health_port, metrics_port = int(match.group(1)), int(match.group(2))
        grpc_port = int(re.search(r"ext_proc on [\d.]+:(\d+)", line).group(1))

        # no InferencePool yet: not ready
        assert await _health(health_port) == NOT_SERVING
        api.apply(POOL, inference_pool("pool-a", {"app": "vllm"}, [idle.port, busy.port]))
        # the pool exists but pods are forbidden: still not ready, and the log says why
        await eventually(lambda: any("forbidden" in s for s in stderr), 20, "RBAC error logged")
        assert await _health(health_port) == NOT_SERVING
        api.allow(POD)
        for _ in range(200):
            if await _health(health_port) == SERVING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("never became ready: " + "".join(stderr[-5:]))

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        needle = 'inference_pool_average_queue_size{name="pool-a"} 15.0'
        await wait_for_metrics(url, needle, "endpoints scraped")
        replies = await route_once(grpc_port)
        assert destination(replies[0]) == idle.address
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        assert 'priority="2"' in text  # the objective came from the cluster
        assert 'igw_kubernetes_watch_synced{watch="pods app=vllm"} 1.0' in text

        # the pod goes away: the pool empties but stays synced (ready, no endpoints)
        api.delete(POD, "pod-0")
        needle = 'inference_pool_ready_pods{name="pool-a"} 0.0'
        await wait_for_metrics(url, needle, "pod removal reached the pool")
    finally:
        await stop_process(proc)
        await drainer
        await idle.stop()
        await busy.stop()
    assert proc.returncode == 0, "".join(stderr[-10:])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


async def _discovery_for(tmp_path, *argv: str):
    config = tmp_path / "kubeconfig"
    config.write_text(
        "current-context: c\nclusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    from igw.datastore import Pool

    args = _args(*argv, f"--kubeconfig={config}")
    discovery = await command._kubernetes_discovery(args, Pool("p", "team-a", max_endpoints=8))
    await discovery.client.close()
    return discovery


async def test_selector_flags_start_a_standalone_pod_watch_without_objectives(tmp_path):
    discovery = await _discovery_for(
        tmp_path, "--endpoint-selector=app=vllm,tier=gpu", "--endpoint-target-ports=8000,8001"
    )
    assert discovery.standalone is not None
    assert discovery.standalone.label_selector == "app=vllm,tier=gpu"
    assert discovery.standalone.ports == (8000, 8001)
    assert discovery.view is None and discovery.namespace == "team-a"


async def test_pool_flags_watch_the_pool_and_its_objectives_unless_a_file_is_given(tmp_path):
    watched = await _discovery_for(
        tmp_path, "--pool-name=p", "--pool-group=inference.networking.x-k8s.io"
    )
    assert (watched.pool_name, watched.pool_group) == ("p", "inference.networking.x-k8s.io")
    assert watched.view is not None
    from_file = await _discovery_for(tmp_path, "--pool-name=p", "--objectives-file=o.yaml")
    assert from_file.view is None


async def _start_epp(config: str, home: Path, *extra: str):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "igw", "epp", "--pool-name=pool-a", f"--kubeconfig={config}",
        "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--secure-serving=false",
        "--drain-timeout=1s", *extra,
        env=_isolated_env(home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    match = re.search(r"health on :(\d+)", line)
    assert match, line
    return proc, int(match.group(1))


async def test_with_leader_election_only_the_leader_is_ready_and_it_hands_over(tmp_path, api):
    api.apply(POOL, inference_pool("pool-a", {"app": "vllm"}, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", {"app": "vllm"}))
    config = api.kubeconfig(tmp_path / "kubeconfig")
    first, first_health = await _start_epp(config, tmp_path, "--ha-enable-leader-election")
    second = None
    try:
        for _ in range(100):
            if await _health(first_health) == SERVING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first replica never led")
        second, second_health = await _start_epp(config, tmp_path, "--ha-enable-leader-election")
        await asyncio.sleep(0.5)
        assert await _health(second_health) == NOT_SERVING  # synced, but a follower
        await stop_process(first)  # releases the lease on the way out
        for _ in range(100):  # the follower's next round (every 2 s) takes it
            if await _health(second_health) == SERVING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the follower never took over")
    finally:
        await stop_process(first)
        if second is not None:
            await stop_process(second)
    assert first.returncode == 0


def test_leader_election_needs_kubernetes_discovery(tmp_path, monkeypatch):
    message = _usage_error(
        monkeypatch, tmp_path, "--endpoints=10.0.0.1:8000", "--ha-enable-leader-election"
    )
    assert "--ha-enable-leader-election" in message and "--pool-name" in message
