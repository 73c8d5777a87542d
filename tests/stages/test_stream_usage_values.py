"""Usage read from SSE events keeps json's values: exact large counts, unusable ones skipped.

The stream's usage events are decoded by orjson first (faster) and by json when orjson's
answer could differ (counts beyond 64 bits, which orjson rounds to floats) or when orjson
refuses the text (NaN), so these cases pin what json's decoding gives.
"""

from __future__ import annotations

import pytest

from igw.pipeline import Request
from igw.stages import UsageStage


def stream_usage(event: bytes) -> Request:
    request = Request("r", incoming_model="m", target_model="m")
    stage = UsageStage()
    stage.on_headers(request, 200, {"content-type": "text/event-stream"})
    stage.on_chunk(request, b"data: " + event + b"\n\ndata: [DONE]\n\n", False)
    stage.on_chunk(request, b"", True)
    return request


@pytest.mark.parametrize(
    "count",
    [2**64, 2**64 + 1, 10**29 + 7, -(2**63) - 1, 2**63 + 1, 4096],
)
def test_a_streamed_count_is_read_exactly_at_any_size(count):
    event = b'{"usage":{"prompt_tokens":%d,"completion_tokens":3,"total_tokens":%d}}' % (
        count,
        count,
    )
    usage = stream_usage(event).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (count, 3, count)


def test_a_streamed_usage_event_with_a_count_that_is_not_a_number_is_skipped():
    request = stream_usage(b'{"usage":{"prompt_tokens":NaN,"completion_tokens":3}}')
    assert request.usage.prompt_tokens == 0 and request.usage.completion_tokens == 0


def test_json_that_only_the_standard_decoder_accepts_still_counts():
    # a lone surrogate in a string: orjson refuses it, json decodes it
    request = stream_usage(b'{"id":"\\ud800","usage":{"prompt_tokens":5,"completion_tokens":2}}')
    assert (request.usage.prompt_tokens, request.usage.completion_tokens) == (5, 2)
