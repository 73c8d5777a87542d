"""Per-engine extraction of queue, running, KV, LoRA and cache geometry from pages."""

from __future__ import annotations

import pytest

from igw.datalayer.engines import ENGINES, engine_of, extract
from igw.datalayer.promtext import MetricsParseError
from igw.datalayer.testing import (
    LoraSeries,
    sglang_page,
    triton_page,
    triton_trtllm_page,
    trtllm_page,
    vllm_page,
)


@pytest.mark.parametrize(
    ("engine", "page", "expected"),
    [
        ("vllm", vllm_page(4, 2, 0.5, block_size=16, num_gpu_blocks=1000), (4, 2, 0.5, 16, 1000)),
        ("sglang", sglang_page(3, 1, 0.25, page_size=1, num_pages=9000), (3, 1, 0.25, 1, 9000)),
        (
            "trtllm-serve",
            trtllm_page(5, 6, 0.75, tokens_per_block=32, max_blocks=700),
            (5, 6, 0.75, 32, 700),
        ),
        (
            "triton-tensorrt-llm",
            triton_trtllm_page(2, 8, 0.125, tokens_per_block=64, max_blocks=300),
            (2, 8, 0.125, 64, 300),
        ),
        ("triton", triton_page(pending=9, executions=11), (9, 11, 0.0, None, None)),
    ],
)
def test_each_engine_page_yields_its_figures(engine, page, expected):
    scraped = extract(ENGINES[engine], page)
    got = (scraped.waiting, scraped.running, scraped.kv_util, scraped.block_size)
    assert (*got, scraped.num_blocks) == expected


def test_old_vllm_kv_name_is_the_fallback():
    assert extract(ENGINES["vllm"], vllm_page(0, 0, 0.33, legacy_kv=True)).kv_util == 0.33


def test_lora_takes_the_series_with_the_newest_value():
    page = vllm_page(
        lora=[
            LoraSeries("old", "", 2, 1_700_000_000.0),
            LoraSeries("a,b", "c", 4, 1_700_000_300.0),
            LoraSeries("mid", "", 3, 1_700_000_100.0),
        ]
    )
    scraped = extract(ENGINES["vllm"], page)
    assert (scraped.lora_running, scraped.lora_waiting, scraped.max_lora) == (
        ["a", "b"],
        ["c"],
        4,
    )


def test_lora_idle_series_keeps_the_last_loaded_adapters():
    page = vllm_page(lora=[LoraSeries("a", "", 2, 100.0), LoraSeries("", "", 2, 200.0)])
    assert extract(ENGINES["vllm"], page).lora_running == ["a"]


def test_lora_with_only_idle_series_means_no_adapters():
    page = vllm_page(lora=[LoraSeries("", "", 2, 200.0)])
    scraped = extract(ENGINES["vllm"], page)
    assert (scraped.lora_running, scraped.lora_waiting, scraped.max_lora) == ([], [], 2)


def test_page_without_lora_family_leaves_lora_unknown():
    assert extract(ENGINES["vllm"], vllm_page()).lora_running is None


def test_unprofiled_cache_config_leaves_blocks_unknown():
    scraped = extract(ENGINES["vllm"], vllm_page(num_gpu_blocks="None"))
    assert (scraped.block_size, scraped.num_blocks) == (16, None)


def test_several_series_are_summed_and_kv_averaged():
    page = (
        b'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 3\n'
        b'vllm:num_requests_running{engine="0"} 1\nvllm:num_requests_running{engine="1"} 1\n'
        b'vllm:kv_cache_usage_perc{engine="0"} 0.2\nvllm:kv_cache_usage_perc{engine="1"} 0.4\n'
    )
    scraped = extract(ENGINES["vllm"], page)
    assert (scraped.waiting, scraped.running) == (5, 2)
    assert scraped.kv_util == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("page", "needle"),
    [
        (b"<html>not metrics</html>", "has no vllm:num_requests_waiting"),
        (b"vllm:num_requests_waiting 1\nvllm:num_requests_running 1\n", "kv_cache_usage_perc"),
        (
            b"vllm:num_requests_waiting 1\nvllm:num_requests_running 1\n"
            b"vllm:kv_cache_usage_perc 7\n",
            "expected a fraction within 0..1",
        ),
        (
            b"vllm:num_requests_waiting -1\nvllm:num_requests_running 1\n"
            b"vllm:kv_cache_usage_perc 0.1\n",
            "expected a count >= 0",
        ),
        (b"vllm:num_requests_waiting one\n", "is not a number"),
    ],
)
def test_unusable_page_raises_a_clear_error(page: bytes, needle: str):
    with pytest.raises(MetricsParseError, match=needle):
        extract(ENGINES["vllm"], page)


def test_engine_comes_from_the_label_with_vllm_default():
    assert engine_of({"llm-d.ai/engine-type": "sglang"}) == "sglang"
    assert engine_of({}) == "vllm"


def test_custom_engine_narrows_by_labels_and_rejects_empty_names():
    from igw.datalayer import custom_engine

    spec = custom_engine("x", waiting="q", running="r", labels={"role": "decode"})
    page = b'q{role="prefill"} 9\nq{role="decode"} 2\nr{role="decode"} 1\n'
    scraped = extract(spec, page)
    assert (scraped.waiting, scraped.running, scraped.kv_util) == (2, 1, 0.0)
    with pytest.raises(ValueError, match="custom engine waiting must be a non-empty string"):
        custom_engine("x", waiting="", running="r")
