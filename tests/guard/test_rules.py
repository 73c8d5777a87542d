"""The text rules on their own: detectors, Luhn, redaction spans and the window offset."""

from __future__ import annotations

import re
import time

import pytest

from igw.guard.config import DenyRule, PiiSpec
from igw.guard.rules import Action, Rule, RuleSet, luhn_ok

VISA = "4111 1111 1111 1111"  # a well-known test number that passes Luhn


def rules(**pii: str) -> RuleSet:
    return RuleSet.from_spec([], PiiSpec.model_validate(pii))


def test_luhn_accepts_valid_numbers_with_separators():
    assert luhn_ok(VISA)
    assert luhn_ok("5500-0000-0000-0004")


def test_luhn_rejects_bad_checksum_and_wrong_length():
    assert not luhn_ok("4111 1111 1111 1112")
    assert not luhn_ok("4111 1111 111")  # 11 digits


def test_card_rule_ignores_digit_runs_failing_luhn():
    ruleset = rules(creditCards="block")
    assert ruleset.first_block("order 1234567890123456 shipped") is None
    assert ruleset.first_block(f"card {VISA} thanks").name == "pii.creditCards"


def test_email_and_api_key_detectors():
    ruleset = rules(emails="block", apiKeys="block")
    assert ruleset.first_block("mail bob.smith+x@example.co.uk now").name == "pii.emails"
    assert ruleset.first_block("key sk-proj-" + "a" * 24).name == "pii.apiKeys"
    assert ruleset.first_block("key AKIA" + "ABCDEFGHIJKLMNOP").name == "pii.apiKeys"
    assert ruleset.first_block("token ghp_" + "x" * 36).name == "pii.apiKeys"
    assert ruleset.first_block("nothing secret here: sk- at 1 o'clock") is None


def test_redact_replaces_each_match_with_its_label():
    text, names = rules(emails="redact", creditCards="redact").redact_text(
        f"a@b.io paid with {VISA}."
    )
    assert text == "[REDACTED:EMAIL] paid with [REDACTED:CREDIT_CARD]."
    assert names == ["pii.emails", "pii.creditCards"]


def test_redact_merges_overlapping_matches():
    ruleset = RuleSet([
        Rule("a", re.compile("abcd"), Action.REDACT, label="A"),
        Rule("b", re.compile("cdef"), Action.REDACT, label="B"),
    ])  # fmt: skip
    text, names = ruleset.redact_text("xxabcdefyy")
    assert text == "xx[REDACTED:A]yy"
    assert names == ["a", "b"]


def test_matches_ending_before_start_are_ignored():
    ruleset = RuleSet.from_spec([DenyRule(name="k", pattern="KEY")], PiiSpec())
    assert ruleset.first_block("KEY then more", start=3) is None
    assert ruleset.first_block("KE" + "Y", start=2).name == "k"


def test_redact_from_start_only_rewrites_the_new_part():
    text, _ = rules(emails="redact").redact_text("bob@exa" + "mple.com rest", start=7)
    assert text == "[REDACTED:EMAIL] rest"


@pytest.mark.parametrize(
    "text", ["x" * 200_000, "a." * 100_000, "1" * 200_000, "sk- " * 50_000, "a@" * 100_000]
)
def test_detectors_stay_linear_on_long_runs(text):
    ruleset = rules(emails="block", creditCards="block", apiKeys="block")
    started = time.perf_counter()
    assert ruleset.first_block(text) is None
    assert time.perf_counter() - started < 1.0  # quadratic backtracking took ~15 s here
