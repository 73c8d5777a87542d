"""Static and file discovery: membership, per-endpoint attributes, reloads, bad input."""

from __future__ import annotations

import logging
import os

import pytest

from igw.datalayer import DiscoveryError, FileDiscovery, StaticDiscovery
from igw.datalayer.discovery import parse_file_text


def addresses(pool):
    return sorted(e.address for e in pool.endpoints())


async def test_static_list_becomes_the_pool(pool):
    await StaticDiscovery(pool, "10.0.0.1:8000, 10.0.0.2:8001,10.0.0.3").start()
    assert addresses(pool) == ["10.0.0.1:8000", "10.0.0.2:8001", "10.0.0.3:8000"]
    assert pool.synced


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.1:8000,10.0.0.2:99999", r"entry 2 \('10.0.0.2:99999'\): .*port must be 1..65535"),
        ("10.0.0.1:8000,10.0.0.1:8000", "10.0.0.1:8000 is listed twice"),
    ],
)
def test_static_list_errors_name_the_entry(pool, text, needle):
    with pytest.raises(DiscoveryError, match=needle):
        StaticDiscovery(pool, text)


def test_line_file_allows_comments_and_blank_lines():
    text = "# fleet\n10.0.0.1:8000\n\n10.0.0.2:8000  # canary\n"
    assert [s.address for s in parse_file_text(text, "f")] == ["10.0.0.1:8000", "10.0.0.2:8000"]


def test_yaml_file_carries_engine_labels_and_name():
    text = """
endpoints:
  - 10.0.0.1:8000
  - address: 10.0.0.2:30000
    engine: sglang
    name: pod-b
    labels: {zone: a}
  - address: 10.0.0.3:8000
    labels: {llm-d.ai/engine-type: trtllm-serve}
"""
    specs = parse_file_text(text, "f")
    assert [(s.address, s.engine, s.name) for s in specs] == [
        ("10.0.0.1:8000", "vllm", ""),
        ("10.0.0.2:30000", "sglang", "pod-b"),
        ("10.0.0.3:8000", "trtllm-serve", ""),
    ]
    assert dict(specs[1].labels) == {"zone": "a", "llm-d.ai/engine-type": "sglang"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.1:8000\nnot an address:x\n", "f line 2: .*port must be 1..65535"),
        ("- address: 10.0.0.1:8000\n  engine: tgi\n", r"endpoints\[0\].engine: unknown engine"),
        ("- address: 10.0.0.1:8000\n  port: 1\n", r"endpoints\[0\]: unknown keys \['port'\]"),
        ("- name: x\n", r"endpoints\[0\]: missing 'address'"),
        ("- [1, 2]\n", r"endpoints\[0\]: expected 'ip:port' or a mapping"),
        ("- a: [\n", "invalid YAML"),
        (
            "- address: 10.0.0.1:8000\n  engine: vllm\n  labels: {llm-d.ai/engine-type: sglang}\n",
            "contradicts label",
        ),
    ],
)
def test_bad_file_errors_name_the_place(text, needle):
    with pytest.raises(DiscoveryError, match=needle):
        parse_file_text(text, "f")


async def test_file_sets_membership_and_engine(pool, tmp_path):
    path = tmp_path / "endpoints.yaml"
    path.write_text("- address: 10.0.0.1:8000\n  engine: sglang\n- 10.0.0.2:8000\n")
    discovery = FileDiscovery(pool, path, poll_interval=60)
    await discovery.start()
    try:
        assert addresses(pool) == ["10.0.0.1:8000", "10.0.0.2:8000"]
        assert pool.by_address("10.0.0.1:8000").engine == "sglang"
    finally:
        await discovery.stop()


def _rewrite(path, text: str) -> None:
    path.write_text(text)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a visible change


async def test_file_change_is_reloaded(pool, tmp_path):
    path = tmp_path / "endpoints.txt"
    path.write_text("10.0.0.1:8000\n10.0.0.2:8000\n")
    discovery = FileDiscovery(pool, path, poll_interval=60)
    await discovery.start()
    try:
        kept = pool.by_address("10.0.0.2:8000")
        _rewrite(path, "10.0.0.2:8000\n10.0.0.3:8000\n")
        assert await discovery.reload()
        assert addresses(pool) == ["10.0.0.2:8000", "10.0.0.3:8000"]
        assert pool.by_address("10.0.0.2:8000") is kept  # unchanged members are not recreated
        assert not await discovery.reload()  # nothing changed since
    finally:
        await discovery.stop()


async def test_watcher_picks_up_changes_by_itself(pool, tmp_path):
    from .helpers import wait_until

    path = tmp_path / "endpoints.txt"
    path.write_text("10.0.0.1:8000\n")
    discovery = FileDiscovery(pool, path, poll_interval=0.02)
    await discovery.start()
    try:
        _rewrite(path, "10.0.0.9:8000\n")
        await wait_until(lambda: addresses(pool) == ["10.0.0.9:8000"])
    finally:
        await discovery.stop()


async def test_bad_reload_keeps_previous_endpoints_and_logs_why(pool, tmp_path, caplog):
    path = tmp_path / "endpoints.txt"
    path.write_text("10.0.0.1:8000\n")
    discovery = FileDiscovery(pool, path, poll_interval=60)
    await discovery.start()
    try:
        caplog.set_level(logging.ERROR, logger="igw.datalayer.discovery")
        _rewrite(path, "10.0.0.1:8000\n10.0.0.2:http\n")
        assert not await discovery.reload()
        assert addresses(pool) == ["10.0.0.1:8000"]
        assert discovery.errors == 1
        assert "line 2" in discovery.last_error
        assert any("keeping the previous 1 endpoints" in r.message for r in caplog.records)
        path.unlink()
        assert not await discovery.reload()
        assert addresses(pool) == ["10.0.0.1:8000"]
        assert "does not exist" in discovery.last_error
    finally:
        await discovery.stop()


async def test_missing_file_fails_at_start(pool, tmp_path):
    with pytest.raises(DiscoveryError, match="endpoints file does not exist"):
        await FileDiscovery(pool, tmp_path / "nope.txt").start()
