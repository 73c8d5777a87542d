"""Response usage parsing (SSE and whole bodies) and reverse model-name rewrite."""

from __future__ import annotations

from igw.parsing import UsageParser, reverse_rewriter, usage_from_body


def test_sse_usage_is_found_in_the_usage_event_and_done_is_skipped():
    parser = UsageParser(streaming=True)
    parser.feed(b"data: {}\n\n", False)
    parser.feed(
        b'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\n'
        b"data: [DONE]",
        False,
    )
    parser.feed(b"", True)
    assert parser.usage is not None
    assert (parser.usage.prompt_tokens, parser.usage.completion_tokens) == (7, 10)
    assert parser.usage.total_tokens == 17


def test_sse_line_split_across_chunks_is_reassembled():
    parser = UsageParser(streaming=True)
    parser.feed(b'data: {"choices":[],"us', False)
    parser.feed(b'age":{"prompt_tokens":3,"completion_tokens":4}}\n\n', False)
    assert parser.usage is not None and parser.usage.completion_tokens == 4


def test_responses_api_completed_event_usage_with_cached_tokens():
    parser = UsageParser(streaming=True)
    parser.feed(
        b"event: response.completed\n"
        b'data: {"type":"response.completed","response":{"usage":{"input_tokens":31,'
        b'"output_tokens":5,"input_tokens_details":{"cached_tokens":16}}}}\n\n',
        True,
    )
    assert parser.usage is not None
    assert (parser.usage.prompt_tokens, parser.usage.cached_tokens) == (31, 16)


def test_usage_split_across_events_is_merged():
    parser = UsageParser(streaming=True)
    parser.feed(b'data: {"type":"message_start","message":{"usage":{"input_tokens":9}}}\n', False)
    parser.feed(b'data: {"type":"message_delta","usage":{"output_tokens":2}}\n', True)
    assert parser.usage is not None
    assert (parser.usage.prompt_tokens, parser.usage.completion_tokens) == (9, 2)


def test_broken_sse_json_is_ignored():
    parser = UsageParser(streaming=True)
    parser.feed(b"data: {usage broken\n\n", True)
    assert parser.usage is None


def test_non_stream_body_is_buffered_and_parsed_at_end():
    parser = UsageParser(streaming=False)
    parser.feed(b'{"usage":{"prompt_tokens":', False)
    assert parser.usage is None
    parser.feed(b'5,"completion_tokens":6,"prompt_tokens_details":{"cached_tokens":2}}}', True)
    assert parser.usage is not None
    assert (parser.usage.prompt_tokens, parser.usage.completion_tokens) == (5, 6)
    assert parser.usage.cached_tokens == 2


def test_non_json_body_has_no_usage():
    assert usage_from_body(b"no healthy upstream usage") is None


def test_reverse_rewrite_replaces_both_spacings():
    rewriter = reverse_rewriter("target-m", "asked-m")
    assert rewriter is not None
    out = rewriter.apply(b'{"model":"target-m","x":{"model": "target-m"},"y":"target-m"}')
    assert out == b'{"model":"asked-m","x":{"model": "asked-m"},"y":"target-m"}'


def test_no_rewriter_when_names_are_equal_or_missing():
    assert reverse_rewriter("m", "m") is None
    assert reverse_rewriter("m", "") is None
