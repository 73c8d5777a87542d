"""Helpers for the simulator's HTTP tests: posting, SSE parsing, metric scraping."""

from __future__ import annotations

import json

import aiohttp


def sse_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = []
    for block in body.decode().split("\n\n"):
        block = block.strip()
        if block:
            assert block.startswith("data: "), block
            events.append(block[len("data: ") :])
    return events


def sse_json(body: bytes) -> list[dict]:
    return [json.loads(e) for e in sse_events(body) if e != "[DONE]"]


async def post(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, dict]:
    """POST JSON; returns (status, JSON body, headers)."""
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """``/metrics`` as {series: value}, series = name plus its label text."""
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def metric(values: dict[str, float], name: str) -> float:
    """The single series of ``name`` (any labels)."""
    found = [v for k, v in values.items() if k == name or k.startswith(name + "{")]
    assert len(found) == 1, (name, found)
    return found[0]
