"""Where the text lives in OpenAI-style JSON, and how to rewrite it in place.

Only strings a person or the model wrote are scanned or rewritten, never structure: model
names, roles, ids, URLs and tool names stay as they are, so a redacted body is still the
same request. On the prompt side the walk starts at the top-level fields that carry text
(``messages``, ``prompt``, ``input``, ``instructions``, ``items``, ``system``); below them,
and everywhere in a response, strings under ``content``, ``text``, ``refusal``,
``arguments``, ``output`` (a tool's result), ``reasoning_content`` and ``delta`` (the
Responses API's streamed text) are text. Lists of strings (a batch of prompts) count as
text of their field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A tuple: the walk (and so the text sent to a moderation service) keeps one stable order.
PROMPT_ROOTS = ("system", "instructions", "messages", "prompt", "input", "items")
TEXT_KEYS = frozenset(
    {
        "content",
        "text",
        "refusal",
        "arguments",
        "output",
        "reasoning_content",
        "delta",
        *PROMPT_ROOTS,
    }
)

# Called with a string; returns the string to keep (the same object when unchanged).
Visitor = Callable[[str], str]


def _walk(node: Any, text_field: bool, visit: Visitor) -> Any:
    """``node`` with ``visit`` applied to its text strings (containers edited in place)."""
    if isinstance(node, str):
        return visit(node) if text_field else node
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key in TEXT_KEYS:
                    new = visit(value)
                    if new is not value:
                        node[key] = new
            elif isinstance(value, dict | list):
                _walk(value, key in TEXT_KEYS, visit)
        return node
    if isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                if text_field:
                    new = visit(value)
                    if new is not value:
                        node[index] = new
            elif isinstance(value, dict | list):
                _walk(value, text_field, visit)
    return node


def walk_prompt(body: dict[str, Any], visit: Visitor) -> None:
    """Apply ``visit`` to every prompt text string of a request body (in place)."""
    for key in PROMPT_ROOTS:
        value = body.get(key)
        if isinstance(value, str):
            new = visit(value)
            if new is not value:
                body[key] = new
        elif isinstance(value, dict | list):
            _walk(value, True, visit)


def walk_response(doc: Any, visit: Visitor) -> Any:
    """Apply ``visit`` to every text string of a response document (in place)."""
    return _walk(doc, False, visit)


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """The prompt text strings of a request body, in document order."""
    out: list[str] = []

    def keep(text: str) -> str:
        out.append(text)
        return text

    walk_prompt(body, keep)
    return out
