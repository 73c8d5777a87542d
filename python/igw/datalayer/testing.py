"""Metrics pages shaped like real model servers', and fake servers that serve them.

Used by igw's tests and benchmarks (and handy for anyone testing a deployment): the pages
carry the same families, labels and bulk (histogram buckets, process metrics) as the
engines' own, so parsing cost and edge cases are realistic.

``python -m igw.datalayer.testing --servers 100`` starts that many minimal keep-alive HTTP
servers in one process (one port each, a canned vLLM page) and prints the ports as one
comma-separated line; the scraping benchmark runs it as a separate process so its CPU is
not counted against the scraper.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Iterable

from aiohttp import web

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def _histogram(out: list[str], name: str, labels: str, buckets: Iterable[float]) -> None:
    out.append(f"# HELP {name} Histogram of {name.split(':')[-1].replace('_', ' ')}.")
    out.append(f"# TYPE {name} histogram")
    count = 0
    for i, bound in enumerate(buckets):
        count += i * 3
        out.append(f'{name}_bucket{{le="{float(bound)}",{labels}}} {float(count)}')
    out.append(f'{name}_bucket{{le="+Inf",{labels}}} {float(count)}')
    out.append(f"{name}_count{{{labels}}} {float(count)}")
    out.append(f"{name}_sum{{{labels}}} {count * 0.37:.6f}")


def _process_metrics(out: list[str]) -> None:
    for name, kind, value in (
        ("python_gc_objects_collected_total", "counter", 12345.0),
        ("process_virtual_memory_bytes", "gauge", 9.7e10),
        ("process_resident_memory_bytes", "gauge", 4.1e9),
        ("process_start_time_seconds", "gauge", 1.76e9),
        ("process_cpu_seconds_total", "counter", 8812.4),
        ("process_open_fds", "gauge", 77.0),
    ):
        out.append(f"# HELP {name} {name.replace('_', ' ')}.")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {value}")


@dataclasses.dataclass
class LoraSeries:
    """One ``vllm:lora_requests_info`` series; ``stamp`` is its value (a Unix time)."""

    running: str = ""
    waiting: str = ""
    max_lora: int = 4
    stamp: float = 1.76e9


def vllm_page(
    waiting: int = 0,
    running: int = 0,
    kv_util: float = 0.0,
    *,
    model: str = "meta-llama/Llama-3.1-8B-Instruct",
    block_size: int = 16,
    num_gpu_blocks: int | str = 27000,
    lora: Iterable[LoraSeries] = (),
    legacy_kv: bool = False,
    bulk: bool = True,
) -> bytes:
    """A vLLM v1 ``/metrics`` page (about 30 KB with ``bulk``)."""
    labels = f'engine="0",model_name="{model}"'
    out: list[str] = []
    if bulk:
        _process_metrics(out)
    out.append("# HELP vllm:num_requests_running Number of requests in model execution batches.")
    out.append("# TYPE vllm:num_requests_running gauge")
    out.append(f"vllm:num_requests_running{{{labels}}} {float(running)}")
    out.append("# HELP vllm:num_requests_waiting Number of requests waiting to be processed.")
    out.append("# TYPE vllm:num_requests_waiting gauge")
    out.append(f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}")
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv else "vllm:kv_cache_usage_perc"
    out.append(f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.")
    out.append(f"# TYPE {kv_name} gauge")
    out.append(f"{kv_name}{{{labels}}} {kv_util}")
    lora = list(lora)
    if lora:
        out.append("# HELP vllm:lora_requests_info Running stats on lora requests.")
        out.append("# TYPE vllm:lora_requests_info gauge")
        for series in lora:
            out.append(
                f'vllm:lora_requests_info{{max_lora="{series.max_lora}",'
                f'running_lora_adapters="{series.running}",'
                f'waiting_lora_adapters="{series.waiting}"}} {series.stamp}'
            )
    out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig")
    out.append("# TYPE vllm:cache_config_info gauge")
    out.append(
        f'vllm:cache_config_info{{block_size="{block_size}",cache_dtype="auto",'
        f'calculate_kv_scales="False",enable_prefix_caching="True",engine="0",'
        f'gpu_memory_utilization="0.9",num_cpu_blocks="None",'
        f'num_gpu_blocks="{num_gpu_blocks}",prefix_caching_hash_algo="sha256"}} 1.0'
    )
    if bulk:
        for counter in ("prompt_tokens_total", "generation_tokens_total", "num_preemptions_total"):
            out.append(f"# HELP vllm:{counter} Number of {counter}.")
            out.append(f"# TYPE vllm:{counter} counter")
            out.append(f"vllm:{counter}{{{labels}}} 123456.0")
        for reason in ("stop", "length", "abort"):
            out.append(f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} 99.0')
        for name in (
            "time_to_first_token_seconds",
            "time_per_output_token_seconds",
            "e2e_request_latency_seconds",
            "request_queue_time_seconds",
            "request_inference_time_seconds",
            "request_prefill_time_seconds",
            "request_decode_time_seconds",
            "inter_token_latency_seconds",
        ):
            _histogram(out, f"vllm:{name}", labels, _LATENCY_BUCKETS)
        for name in (
            "request_prompt_tokens",
            "request_generation_tokens",
            "iteration_tokens_total",
            "request_params_n",
            "request_params_max_tokens",
            "request_max_num_generation_tokens",
        ):
            _histogram(out, f"vllm:{name}", labels, _TOKEN_BUCKETS)
    return ("\n".join(out) + "\n").encode()


def sglang_page(
    waiting: int = 0, running: int = 0, kv_util: float = 0.0, *, page_size: int = 1,
    num_pages: int = 400000,
) -> bytes:  # fmt: skip
    labels = 'model_name="qwen"'
    out: list[str] = []
    _process_metrics(out)
    out.append(f"sglang:num_running_reqs{{{labels}}} {float(running)}")
    out.append(f"sglang:num_queue_reqs{{{labels}}} {float(waiting)}")
    out.append(f"sglang:token_usage{{{labels}}} {kv_util}")
    out.append(f'sglang:cache_config_info{{num_pages="{num_pages}",page_size="{page_size}"}} 1.0')
    _histogram(out, "sglang:time_to_first_token_seconds", labels, _LATENCY_BUCKETS)
    return ("\n".join(out) + "\n").encode()


def trtllm_page(
    waiting: int = 0, running: int = 0, kv_util: float = 0.0, *, tokens_per_block: int = 32,
    max_blocks: int = 5000,
) -> bytes:  # fmt: skip
    out: list[str] = []
    _process_metrics(out)
    out.append(f'trtllm_num_requests_waiting{{model_name="x"}} {float(waiting)}')
    out.append(f'trtllm_num_requests_running{{model_name="x"}} {float(running)}')
    out.append(f'trtllm_kv_cache_utilization{{model_name="x"}} {kv_util}')
    out.append(f'trtllm_kv_cache_tokens_per_block{{model_name="x"}} {float(tokens_per_block)}')
    out.append(f'trtllm_kv_cache_max_blocks{{model_name="x"}} {float(max_blocks)}')
    return ("\n".join(out) + "\n").encode()


def triton_trtllm_page(
    waiting: int = 0, running: int = 0, kv_util: float = 0.0, *, tokens_per_block: int = 64,
    max_blocks: int = 3000,
) -> bytes:  # fmt: skip
    req = "nv_trt_llm_request_metrics"
    kv = "nv_trt_llm_kv_cache_block_metrics"
    base = 'model="tensorrt_llm",version="1"'
    out = [
        f"# HELP {req} TRT LLM request metrics",
        f"# TYPE {req} gauge",
        f'{req}{{{base},request_type="context"}} 1',
        f'{req}{{{base},request_type="scheduled"}} {running}',
        f'{req}{{{base},request_type="max"}} 512',
        f'{req}{{{base},request_type="active"}} {running + waiting}',
        f'{req}{{{base},request_type="waiting"}} {waiting}',
        f"# TYPE {kv} gauge",
        f'{kv}{{{base},kv_cache_block_type="used"}} 100',
        f'{kv}{{{base},kv_cache_block_type="free"}} 2900',
        f'{kv}{{{base},kv_cache_block_type="max"}} {max_blocks}',
        f'{kv}{{{base},kv_cache_block_type="tokens_per"}} {tokens_per_block}',
        f'{kv}{{{base},kv_cache_block_type="fraction"}} {kv_util}',
    ]
    return ("\n".join(out) + "\n").encode()


def triton_page(pending: int = 0, executions: int = 0) -> bytes:
    out = [
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests",
        "# TYPE nv_inference_pending_request_count gauge",
        f'nv_inference_pending_request_count{{model="a",version="1"}} {pending}',
        "# HELP nv_inference_exec_count Number of model executions performed",
        "# TYPE nv_inference_exec_count counter",
        f'nv_inference_exec_count{{model="a",version="1"}} {executions}',
    ]
    return ("\n".join(out) + "\n").encode()


class FakeModelServer:
    """An aiohttp model server on 127.0.0.1 (port 0) whose behaviour tests change live.

    ``page`` is served on /metrics with ``metrics_status``; ``hang`` makes /metrics never
    answer; ``keep_alive`` False closes the connection after each page; ``health_status``
    drives /health; ``models`` feeds /v1/models. ``stop()`` and a
    later ``start()`` rebind the same port (an endpoint that vanishes and comes back).
    """

    def __init__(
        self,
        page: bytes = b"",
        *,
        models: Iterable[str] = ("m",),
        parents: dict[str, str] | None = None,
    ) -> None:
        self.page = page or vllm_page(bulk=False)
        self.metrics_status = 200
        self.hang = False
        self.keep_alive = True
        self.health_status = 200
        self.models = list(models)
        self.parents = dict(parents or {})  # adapter name -> base model in /v1/models
        self.metrics_hits = 0
        self.health_hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.metrics_hits += 1
        if self.hang:
            await asyncio.sleep(3600)
        response = web.Response(
            body=self.page, status=self.metrics_status, content_type="text/plain"
        )
        if not self.keep_alive:
            response.force_close()
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.health_hits += 1
        return web.Response(status=self.health_status)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "parent": self.parents.get(m)}
                    for m in self.models
                ],
            }
        )

    async def start(self) -> FakeModelServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.05, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _CannedHttp(asyncio.Protocol):
    """Answers every request on a keep-alive connection with the same bytes (bench only)."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            _head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self._buffer = rest
            if self._transport is not None:
                self._transport.write(self._response)


async def serve_canned(count: int, page: bytes) -> list[int]:
    """Start ``count`` canned servers on free ports; return the ports."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        b"Content-Length: %d\r\n\r\n" % len(page)
    ) + page
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        server = await loop.create_server(lambda: _CannedHttp(response), "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
    return ports


async def _main(count: int) -> None:
    ports = await serve_canned(count, vllm_page(3, 5, 0.42, lora=[LoraSeries("a,b", "c")]))
    print(",".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()  # until the parent kills us


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100)
    try:
        asyncio.run(_main(parser.parse_args().servers))
    except KeyboardInterrupt:
        pass
