"""guard.out: streamed SSE windows, whole JSON bodies and raw text."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.guard import build_guard
from igw.guard.response import ResponseGuard
from igw.pipeline import Request

SSE = {"content-type": "text/event-stream"}
VISA = "4111 1111 1111 1111"


def guard(**response) -> ResponseGuard:
    (stage,) = build_guard({"response": response}).response_checks
    return stage


def delta(text: str) -> bytes:
    event = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}}]}  # fmt: skip
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def stream(stage, chunks: list[bytes], headers=SSE) -> tuple[Request, bytes]:
    request = Request("r", stream=True)
    stage.on_headers(request, 200, headers)
    out = [stage.on_chunk(request, c, False) for c in chunks]
    out.append(stage.on_chunk(request, b"", True))
    stage.on_finish(request)
    return request, b"".join(out)


def texts(sse: bytes) -> list[str]:
    """The delta texts of a chat stream, and error messages, in order."""
    found = []
    for line in sse.split(b"\n"):
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if "error" in event:
                found.append("ERROR:" + event["error"]["code"])
            else:
                found.append(event["choices"][0]["delta"]["content"])
    return found


def test_clean_stream_passes_byte_for_byte():
    body = delta("hello ") + delta("world") + b"data: [DONE]\n\n"
    _, out = stream(guard(deny=[{"name": "leak", "pattern": "PRIVATE KEY"}]), [body[:7], body[7:]])
    assert out == body


def test_block_match_split_across_events_and_chunks_is_found():
    stage = guard(deny=[{"name": "leak", "pattern": "BEGIN PRIVATE KEY"}])
    events = delta("ok ") + delta("BEGIN PRI") + delta("VATE KEY abc") + delta("more")
    cut = events.index(b"VATE") - 3  # a chunk boundary inside the second half's event
    request, out = stream(stage, [events[:cut], events[cut:], b"data: [DONE]\n\n"])
    assert texts(out) == ["ok ", "BEGIN PRI", "ERROR:content_policy_violation"]
    assert b"VATE KEY" not in out and b"more" not in out and b"[DONE]" not in out
    assert request.attrs["guard.blocked"] == "leak"
    assert out.endswith(b"\n\n")


def test_window_zero_misses_a_split_match():
    stage = guard(deny=[{"name": "leak", "pattern": "BEGIN PRIVATE KEY"}], window=0)
    _, out = stream(stage, [delta("BEGIN PRI"), delta("VATE KEY")])
    assert texts(out) == ["BEGIN PRI", "VATE KEY"]


def test_block_inside_one_chunk_keeps_earlier_events_and_their_framing():
    stage = guard(deny=[{"name": "leak", "pattern": "secret"}])
    _, out = stream(stage, [delta("a") + delta("b") + delta("the secret") + delta("c")])
    assert texts(out) == ["a", "b", "ERROR:content_policy_violation"]
    assert out.count(b"\n\n") == 3  # every event still ends with a blank line


def test_sse_redaction_rewrites_only_json_string_content():
    stage = guard(pii={"creditCards": "redact"})
    request, out = stream(stage, [delta(f"card {VISA} ok"), b"data: [DONE]\n\n"])
    assert texts(out) == ["card [REDACTED:CREDIT_CARD] ok"]
    assert out.endswith(b"data: [DONE]\n\n")
    assert request.attrs["guard.decisions"] == [("guard.out", "redact", ["pii.creditCards"])]


def test_sse_redaction_of_split_match_replaces_the_unsent_part():
    stage = guard(pii={"creditCards": "redact"})
    _, out = stream(stage, [delta("card 4111 1111 "), delta("1111 1111 thanks")])
    assert texts(out) == ["card 4111 1111 ", "[REDACTED:CREDIT_CARD] thanks"]


def test_responses_api_delta_strings_are_scanned():
    stage = guard(deny=[{"name": "leak", "pattern": "PRIVATE KEY"}])
    event = {"type": "response.output_text.delta", "delta": "PRIVATE KEY"}
    _, out = stream(stage, [b"event: response.output_text.delta\ndata: "
                            + json.dumps(event).encode() + b"\n\n"])  # fmt: skip
    assert b"PRIVATE KEY" not in out and b"content_policy_violation" in out


def test_whole_json_body_is_redacted_and_stays_json():
    stage = guard(pii={"emails": "redact"})
    request = Request("r")
    stage.on_headers(request, 200, {"content-type": "application/json"})
    body = {
        "id": "x",
        "model": "a@b.io-model",
        "choices": [{"message": {"role": "assistant", "content": "write to a@b.io"}}],
    }
    out = json.loads(stage.on_chunk(request, json.dumps(body).encode(), True))
    assert out["choices"][0]["message"]["content"] == "write to [REDACTED:EMAIL]"
    assert out["model"] == "a@b.io-model"  # structure is not text


def test_whole_json_body_blocked_becomes_an_error_object():
    stage = guard(deny=[{"name": "leak", "pattern": "PRIVATE KEY"}])
    request = Request("r")
    stage.on_headers(request, 200, {"content-type": "application/json"})
    body = {"choices": [{"text": "-----BEGIN PRIVATE KEY-----"}]}
    out = json.loads(stage.on_chunk(request, json.dumps(body).encode(), True))
    assert out["error"]["code"] == "content_policy_violation"
    assert "leak" in out["error"]["message"]


def test_unchanged_whole_body_is_the_same_bytes():
    stage = guard(pii={"emails": "redact"})
    request = Request("r")
    stage.on_headers(request, 200, {"content-type": "application/json"})
    body = b'{"choices": [{"text": "nothing here"}]}'
    assert stage.on_chunk(request, body, True) is body


def test_raw_text_in_pieces_blocks_across_the_boundary_and_swallows_the_rest():
    stage = guard(deny=[{"name": "leak", "pattern": "PRIVATE KEY"}])
    request, out = stream(
        stage, [b"plain PRIV", b"ATE KEY here", b"tail"], {"content-type": "text/plain"}
    )
    assert out == b"plain PRIV"
    assert request.attrs["guard.blocked"] == "leak"


def test_raw_text_split_utf8_passes_unchanged_without_redaction():
    stage = guard(deny=[{"name": "leak", "pattern": "zzz"}])
    data = "héllo wörld".encode()
    _, out = stream(stage, [data[:2], data[2:]], {"content-type": "text/plain"})
    assert out == data


def test_stream_without_headers_uses_the_request_stream_flag():
    stage = guard(deny=[{"name": "leak", "pattern": "secret"}])
    request = Request("r", stream=True)
    out = stage.on_chunk(request, delta("a secret"), False)
    assert b"content_policy_violation" in out and b"a secret" not in out


def test_response_decisions_are_logged_without_the_answer_text(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="igw.guard")
    stage = guard(deny=[{"name": "leak", "pattern": "PRIVATE KEY"}], pii={"emails": "redact"})
    stream(stage, [delta("mail a@b.io "), delta("then the PRIVATE KEY")])
    assert "stage=guard.out action=block rules=leak" in caplog.text
    assert "stage=guard.out action=redact rules=pii.emails" in caplog.text
    assert "a@b.io" not in caplog.text and "PRIVATE KEY" not in caplog.text


@settings(max_examples=60, deadline=None)
@given(
    before=st.text(alphabet="abc xyz", max_size=40),
    after=st.text(alphabet="abc xyz", max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
    event_size=st.integers(min_value=1, max_value=12),
)
def test_a_match_is_found_wherever_chunks_and_events_are_cut(before, after, cuts, event_size):
    text = before + "BEGIN PRIVATE KEY" + after
    events = b"".join(delta(text[i : i + event_size]) for i in range(0, len(text), event_size))
    chunks, start = [], 0
    for cut in sorted({min(c, len(events)) for c in cuts}):
        chunks.append(events[start:cut])
        start = cut
    chunks.append(events[start:])
    stage = guard(deny=[{"name": "leak", "pattern": "BEGIN PRIVATE KEY"}], window=32)
    request, out = stream(stage, chunks)
    assert request.attrs.get("guard.blocked") == "leak"
    assert texts(out)[-1] == "ERROR:content_policy_violation"
    sent = "".join(texts(out)[:-1])
    assert text.startswith(sent)
    assert len(sent) < len(before) + len("BEGIN PRIVATE KEY")  # the match never fully sent


def test_error_event_never_joins_an_event_left_open_by_an_earlier_chunk():
    stage = guard(deny=[{"name": "leak", "pattern": "secret"}])
    _, out = stream(
        stage, [b'data: {"choices":[{"text":"a"}]}\n', b'data: {"choices":[{"text":"secret"}]}\n\n']
    )
    assert out.startswith(b'data: {"choices":[{"text":"a"}]}\n\n')  # event ended first
    assert out.endswith(b'"code": "content_policy_violation"}}\n\n')
