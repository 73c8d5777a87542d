"""A tiny stand-in for ``igw sim`` and ``igw serve`` so the bench can be tested end to end
without them.

``python fake_openai.py sim --replicas N --port P`` serves N fake OpenAI replicas on ports
P..P+N-1 with the vLLM metric names the bench reads (success counter, prefix-cache hits and
queries). ``python fake_openai.py serve --port P --endpoints URL,...`` is a round-robin proxy
that streams the replica's answer through and adds ``x-igw-served-by``. Latency is a fixed
sleep per uncached 64-char block and per output token, so cache-friendly routing is
measurably faster, as on the real simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

from aiohttp import ClientSession, ClientTimeout, web

MODEL = "fake-model"
BLOCK = 64


class Replica:
    def __init__(self, step_s: float, prefill_s_per_block: float) -> None:
        self.blocks: set[int] = set()
        self.success = 0
        self.hits = 0
        self.queries = 0
        self.step_s = step_s
        self.prefill_s = prefill_s_per_block

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", lambda _r: web.Response(text="ok"))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions", self.complete)
        return app

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def metrics(self, _request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}} '
            f"{self.success}\n"
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f'vllm:prefix_cache_hits_total{{model_name="{MODEL}"}} {self.hits}\n'
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f'vllm:prefix_cache_queries_total{{model_name="{MODEL}"}} {self.queries}\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "messages" in body:
            text = "".join(str(m.get("content", "")) for m in body["messages"])
        else:
            text = str(body.get("prompt", ""))
        hashes = [hash(text[: (i + 1) * BLOCK]) for i in range(len(text) // BLOCK)]
        hit = 0
        for h in hashes:
            if h not in self.blocks:
                break
            hit += 1
        self.blocks.update(hashes)
        self.queries += len(hashes) * BLOCK // 4
        self.hits += hit * BLOCK // 4
        await asyncio.sleep(self.prefill_s * (len(hashes) - hit))
        n_out = int(body.get("max_tokens", 8))
        chat = "messages" in body
        prompt_tokens = len(text) // 4
        if not body.get("stream"):
            await asyncio.sleep(self.step_s * n_out)
            self.success += 1
            return web.json_response(
                {
                    "id": "x",
                    "choices": [{"index": 0, "text": "a " * n_out, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n_out},
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(n_out):
            await asyncio.sleep(self.step_s)
            choice = (
                {"index": 0, "delta": {"content": "a "}} if chat else {"index": 0, "text": "a "}
            )
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_out}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        self.success += 1
        return resp


async def run_sim(args: argparse.Namespace) -> None:
    runners = []
    for i in range(args.replicas):
        runner = web.AppRunner(Replica(0.002 / args.speed, 0.004 / args.speed).app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port + i).start()
        runners.append(runner)
    await asyncio.Event().wait()


async def run_serve(args: argparse.Namespace) -> None:
    endpoints = args.endpoints.split(",")
    cycle = itertools.cycle(endpoints)
    session = ClientSession(timeout=ClientTimeout(total=60))

    async def health(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def proxy(request: web.Request) -> web.StreamResponse:
        target = next(cycle)
        body = await request.read()
        started = time.monotonic()
        async with session.post(target + request.path, data=body) as up:
            resp = web.StreamResponse(
                status=up.status,
                headers={
                    "content-type": up.headers.get("content-type", "application/json"),
                    "x-igw-served-by": target.split("//", 1)[-1],
                },
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
        del started
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", proxy)
    app.router.add_post("/v1/chat/completions", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("sim")
    sim.add_argument("--replicas", type=int, default=2)
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--speed", type=float, default=1.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--profile", default="default")
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--endpoints", required=True)
    serve.add_argument("--policy", default="round-robin")
    serve.add_argument("--config")
    args, _unknown = parser.parse_known_args()
    asyncio.run(run_sim(args) if args.cmd == "sim" else run_serve(args))


if __name__ == "__main__":
    main()
