"""The messages prompt (chat, responses items, conversations) matches a plain statement of its
rule: every message as ``role\\ntext\\n`` (role, else the item's type), the text of a list
content being its text parts joined by a space. The parser builds it with one join and takes
a string content as it is; this checks both against the plain rule on generated messages."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.errors import InferenceError
from igw.parsing.openai import _messages_prompt

TEXT_TYPES = ("text", "input_text", "output_text")


class Invalid(Exception):
    pass


def reference_prompt(items: list[Any], *, strict: bool) -> bytes:
    """The rule, written plainly (one message at a time)."""
    out = ""
    for item in items:
        if not isinstance(item, dict):
            if strict:
                raise Invalid
            continue
        role = item.get("role")
        if not isinstance(role, str):
            if role is not None and strict:
                raise Invalid
            role = None
        content = item.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list) and all(isinstance(b, dict) for b in content):
            text = " ".join(
                b["text"] for b in content
                if b.get("type") in TEXT_TYPES and isinstance(b.get("text"), str)
            )  # fmt: skip
        else:
            if strict:
                raise Invalid
            text = ""
        label = role or item.get("type") or ""
        out += str(label) + "\n" + text + "\n"
    return out.encode("utf-8", "surrogatepass")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=4)
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from([*TEXT_TYPES, "image_url"]),
                           "text": st.one_of(st.text(max_size=5), st.integers())}),
    st.fixed_dictionaries({"text": st.text(max_size=3)}),
    scalars,
)  # fmt: skip
contents = st.one_of(scalars, st.lists(parts, max_size=3))
roles = st.one_of(st.sampled_from(["user", "system", ""]), scalars)
messages = st.one_of(
    st.fixed_dictionaries({}, optional={"role": roles, "content": contents, "type": scalars}),
    scalars,
)


def run(items: list[Any], strict: bool) -> bytes | type:
    try:
        return _messages_prompt(items, "bad", strict=strict)
    except InferenceError:
        return Invalid


def run_reference(items: list[Any], strict: bool) -> bytes | type:
    try:
        return reference_prompt(items, strict=strict)
    except Invalid:
        return Invalid


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=5))
def test_lenient_prompts_follow_the_plain_rule(items):
    assert run(items, strict=False) == run_reference(items, strict=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=5))
def test_strict_prompts_follow_the_plain_rule_and_refuse_the_same_messages(items):
    assert run(items, strict=True) == run_reference(items, strict=True)


def test_a_long_string_content_is_taken_whole():
    text = "line one\nline two " * 1000
    items = [{"role": "system", "content": "s"}, {"role": "user", "content": text}]
    assert _messages_prompt(items, "bad", strict=True) == f"system\ns\nuser\n{text}\n".encode()
