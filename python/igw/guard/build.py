"""``build_guard``: the ``guard:`` config section -> prompt checks and response stages.

The one wiring place for the guard package (the serve command calls only this): checks run
in a fixed order, cheapest and local first, so an obviously bad prompt never costs a call to
the moderation service: built-in prompt rules, moderation, then plugins in config order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from igw.guard.config import parse_spec
from igw.guard.decisions import DecisionLog
from igw.guard.moderation import ModerationCheck
from igw.guard.plugins import load_plugin
from igw.guard.prompt import PromptCheck
from igw.guard.response import ResponseGuard
from igw.guard.rules import RuleSet


@dataclasses.dataclass(slots=True)
class GuardSetup:
    """What ``build_guard`` made: hand these to ``build_pipeline(guard_checks=...,
    response_checks=...)``. Empty lists mean the guard costs nothing."""

    checks: list[Any] = dataclasses.field(default_factory=list)
    response_checks: list[Any] = dataclasses.field(default_factory=list)


def build_guard(spec: Mapping[str, Any] | None, *, source: str = "") -> GuardSetup:
    """Parse and build the guard; raises ``igw.config.ConfigError`` naming the bad field."""
    parsed = parse_spec(spec, source)
    decisions = DecisionLog(enabled=parsed.log == "decisions")
    setup = GuardSetup()
    prompt = parsed.prompt
    prompt_rules = RuleSet.from_spec(prompt.deny, prompt.pii)
    if prompt_rules or prompt.max_chars is not None:
        setup.checks.append(
            PromptCheck(prompt_rules, max_chars=prompt.max_chars, decisions=decisions)
        )
    if prompt.moderation is not None:
        setup.checks.append(ModerationCheck(prompt.moderation, decisions=decisions))
    response_rules = RuleSet.from_spec(parsed.response.deny, parsed.response.pii)
    if response_rules:
        setup.response_checks.append(
            ResponseGuard(response_rules, window=parsed.response.window, decisions=decisions)
        )
    for index, ref in enumerate(parsed.plugins):
        plugin, is_check, is_response = load_plugin(ref, index, source)
        if is_check:
            setup.checks.append(plugin)
        if is_response:
            setup.response_checks.append(plugin)
    return setup
