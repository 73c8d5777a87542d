"""The targeted Prometheus text scanner: finds exactly the wanted families, rejects bad lines."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from igw.datalayer.promtext import MetricsParseError, family, has_labels, parse_labels, scan
from igw.datalayer.testing import LoraSeries, vllm_page

PAGE = b"""# HELP foo A foo.
# TYPE foo gauge
foo 1.5
foo_total 9
# HELP bar_created ignored
bar_created{a="1"} 3
bar{a="1",b="x"} 2
bar{a="2"} 4e2 1700000000000
baz{q="a}b"} NaN
"""


def test_unlabelled_sample_on_the_first_line_is_found():
    assert family(b"foo 3\nbar 4\n", b"foo") == [(b"", 3.0)]


def test_longer_names_sharing_the_prefix_are_not_taken():
    assert family(PAGE, b"foo") == [(b"", 1.5)]
    assert family(PAGE, b"bar") == [(b'a="1",b="x"', 2.0), (b'a="2"', 400.0)]


def test_help_and_type_lines_are_not_samples():
    assert family(b"# HELP foo x\n# TYPE foo gauge\n", b"foo") == []


def test_absent_family_is_absent_from_scan():
    assert scan(PAGE, {b"foo", b"nope"}) == {b"foo": [(b"", 1.5)]}


def test_closing_brace_inside_a_label_value_does_not_cut_the_labels():
    ((raw, value),) = family(PAGE, b"baz")
    assert parse_labels(raw) == {"q": "a}b"}
    assert math.isnan(value)


def test_crlf_line_endings_are_accepted():
    assert family(b'a 1\r\nfoo{x="1"} 2\r\n', b"foo") == [(b'x="1"', 2.0)]


@pytest.mark.parametrize(
    ("page", "needle"),
    [
        (b"foo abc\n", "is not a number"),
        (b'foo{a="1" 3\n', "unterminated label set"),
        (b"foo\n", "expected 'value [timestamp]'"),
        (b"foo 1 2 3\n", "expected 'value [timestamp]'"),
    ],
)
def test_malformed_wanted_line_raises_naming_the_family(page: bytes, needle: str):
    with pytest.raises(MetricsParseError, match=re.escape(needle)) as info:
        family(page, b"foo")
    assert str(info.value).startswith("foo")


def test_malformed_lines_of_other_families_are_ignored():
    assert family(b"junk {{{ nope\nfoo 2\n", b"foo") == [(b"", 2.0)]


def test_label_escapes_are_resolved():
    assert parse_labels(rb'a="x\"y",b="back\\slash",c="new\nline",') == {
        "a": 'x"y',
        "b": "back\\slash",
        "c": "new\nline",
    }


def test_malformed_label_set_raises():
    with pytest.raises(MetricsParseError, match='name="value" pairs'):
        parse_labels(b'a="1",b=2')


def test_has_labels_needs_exact_values():
    assert has_labels(b'kind="max",model="m"', (("kind", "max"),))
    assert not has_labels(b'kind="maxi"', (("kind", "max"),))
    assert not has_labels(b'other="kind=\\"max\\""', (("kind", "max"),))


def test_agrees_with_prometheus_client_on_a_full_vllm_page():
    page = vllm_page(7, 3, 0.25, lora=[LoraSeries("a", "", 2, 1.7e9)])
    wanted = {
        b"vllm:num_requests_waiting",
        b"vllm:num_requests_running",
        b"vllm:kv_cache_usage_perc",
        b"vllm:lora_requests_info",
        b"vllm:cache_config_info",
    }
    ours = scan(page, wanted)
    theirs = {}
    for metric in text_string_to_metric_families(page.decode()):
        for sample in metric.samples:
            if sample.name.encode() in wanted:
                theirs.setdefault(sample.name.encode(), []).append((sample.labels, sample.value))
    assert {
        name: [(parse_labels(raw), value) for raw, value in samples]
        for name, samples in ours.items()
    } == theirs


_label_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=12
)


@given(values=st.lists(st.tuples(_label_text, st.floats(allow_nan=False)), max_size=5))
def test_values_and_labels_round_trip(values: list[tuple[str, float]]):
    lines = ["# TYPE m gauge", "m_total 1"]
    for i, (text, value) in enumerate(values):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'm{{i="{i}",t="{escaped}"}} {value!r}')
    samples = family(("\n".join(lines) + "\n").encode(), b"m")
    assert [(parse_labels(raw)["t"], value) for raw, value in samples] == values
