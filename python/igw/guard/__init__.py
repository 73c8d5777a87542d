"""Content safety (guard.in on prompts, guard.out on responses), built from the ``guard:``
config section by ``build_guard``. See docs/guard.md."""

from igw.guard.build import GuardSetup, build_guard
from igw.guard.decisions import DecisionLog
from igw.guard.moderation import ModerationCheck
from igw.guard.prompt import PromptCheck
from igw.guard.response import ResponseGuard
from igw.guard.rules import Action, Rule, RuleSet, luhn_ok

__all__ = [
    "Action",
    "DecisionLog",
    "GuardSetup",
    "ModerationCheck",
    "PromptCheck",
    "ResponseGuard",
    "Rule",
    "RuleSet",
    "build_guard",
    "luhn_ok",
]
