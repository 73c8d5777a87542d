"""InferenceObjective / InferenceModelRewrite files: parsing, pool filtering, precedence,
weighted targets and reloading."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import textwrap

import pytest

from igw.config import ConfigError
from igw.objectives import ObjectivesFile, load_objectives, parse_objectives, pick_target

POOL = "vllm-qwen3-32b-pool"

# the reference's hermetic objectives, in both API groups
HERMETIC = f"""
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {{name: sql-lora}}
spec: {{priority: 2, poolRef: {{name: {POOL}}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {{name: sql-lora-sheddable}}
spec: {{poolRef: {{name: {POOL}}}}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {{name: critical}}
spec:
  priority: 10
  poolRef: {{group: inference.networking.k8s.io, kind: InferencePool, name: {POOL}}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {{name: other-pool-objective}}
spec: {{priority: 7, poolRef: {{name: another-pool}}}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {{name: rewrite-test}}
spec:
  poolRef: {{name: {POOL}}}
  rules:
  - matches: [{{model: {{type: Exact, value: model-to-be-rewritten}}}}]
    targets: [{{modelRewrite: rewritten-model}}]
---
apiVersion: v1
kind: Service
metadata: {{name: not-ours}}
spec: {{ports: [{{port: 80}}]}}
---
"""


def rewrite(name: str, rules: str, created: str | None = None, pool: str = POOL) -> str:
    stamp = f", creationTimestamp: '{created}'" if created else ""
    body = textwrap.indent(textwrap.dedent(rules).strip(), "  ")
    return (
        f"apiVersion: llm-d.ai/v1alpha2\nkind: InferenceModelRewrite\n"
        f"metadata: {{name: {name}{stamp}}}\nspec:\n  poolRef: {{name: {pool}}}\n  rules:\n{body}\n"
    )


def test_priorities_of_hermetic_objectives():
    state = parse_objectives(HERMETIC, pool_name=POOL)
    assert state.objectives.priority("sql-lora") == 2
    assert state.objectives.priority("sql-lora-sheddable") == 0  # unset means 0
    assert state.objectives.priority("critical") == 10
    assert state.objectives.priority("unknown") is None
    assert state.objectives.priority(None) is None


def test_objects_of_other_pools_are_ignored():
    state = parse_objectives(HERMETIC, pool_name=POOL)
    assert "other-pool-objective" not in state.objectives
    assert parse_objectives(HERMETIC, pool_name="another-pool").objectives.names() == [
        "other-pool-objective"
    ]


def test_namespace_filter():
    text = HERMETIC.replace("{name: critical}", "{name: critical, namespace: prod}")
    state = parse_objectives(text, pool_name=POOL, pool_namespace="prod")
    assert state.objectives.names() == ["critical"]


def test_exact_rewrite_of_the_hermetic_case():
    rewrites = parse_objectives(HERMETIC, pool_name=POOL).rewrites
    target, rule = rewrites.resolve("model-to-be-rewritten", random.Random(0))
    assert target == "rewritten-model" and rule.resource == "rewrite-test"
    assert rewrites.resolve("my-model", random.Random(0)) is None


def test_exact_rule_beats_an_older_generic_rule():
    text = (
        rewrite("catch-all", "- targets: [{modelRewrite: fallback}]", "2020-01-01T00:00:00Z")
        + "---\n"
        + rewrite(
            "specific",
            "- matches: [{model: {value: chat}}]\n  targets: [{modelRewrite: chat-v2}]",
            "2025-01-01T00:00:00Z",
        )
    )
    rewrites = parse_objectives(text, pool_name=POOL).rewrites
    assert rewrites.resolve("chat", random.Random(0))[0] == "chat-v2"
    assert rewrites.resolve("anything-else", random.Random(0))[0] == "fallback"


def test_oldest_resource_wins_between_equal_rules():
    newer = rewrite(
        "newer",
        "- matches: [{model: {value: m}}]\n  targets: [{modelRewrite: from-newer}]",
        "2025-06-01T00:00:00Z",
    )
    older = rewrite(
        "older",
        "- matches: [{model: {value: m}}]\n  targets: [{modelRewrite: from-older}]",
        "2024-06-01T00:00:00Z",
    )
    rewrites = parse_objectives(newer + "---\n" + older, pool_name=POOL).rewrites
    assert rewrites.resolve("m", random.Random(0))[0] == "from-older"


def test_first_rule_wins_within_a_resource_and_file_order_without_timestamps():
    text = (
        rewrite(
            "first",
            """
            - matches: [{model: {value: m}}]
              targets: [{modelRewrite: rule0}]
            - matches: [{model: {value: m}}, {model: {value: n}}]
              targets: [{modelRewrite: rule1}]
            """,
        )
        + "---\n"
        + rewrite("second", "- matches: [{model: {value: m}}]\n  targets: [{modelRewrite: later}]")
    )
    rewrites = parse_objectives(text, pool_name=POOL).rewrites
    target, rule = rewrites.resolve("m", random.Random(0))
    assert (target, rule.index, rule.resource) == ("rule0", 0, "first")
    assert rewrites.resolve("n", random.Random(0))[0] == "rule1"  # any match of a rule counts


def test_weighted_targets_follow_their_weights():
    text = rewrite(
        "canary",
        """
        - matches: [{model: {value: chatbot}}]
          targets:
          - {weight: 90, modelRewrite: chatbot-stable}
          - {weight: 10, modelRewrite: chatbot-canary}
        """,
    )
    rewrites = parse_objectives(text, pool_name=POOL).rewrites
    rng = random.Random(1234)
    counts = collections.Counter(rewrites.resolve("chatbot", rng)[0] for _ in range(10000))
    assert counts.keys() == {"chatbot-stable", "chatbot-canary"}
    assert 0.87 < counts["chatbot-stable"] / 10000 < 0.93  # 90% +- 3 points (> 10 sigma)


def test_unweighted_targets_are_uniform():
    text = rewrite(
        "spread",
        "- targets: [{modelRewrite: a}, {modelRewrite: b}, {modelRewrite: c}, {modelRewrite: d}]",
    )
    rewrites = parse_objectives(text, pool_name=POOL).rewrites
    rng = random.Random(99)
    counts = collections.Counter(rewrites.resolve("x", rng)[0] for _ in range(8000))
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(1800 < c < 2200 for c in counts.values())


def test_pick_target_is_cumulative_over_weights():
    from igw.objectives import Target

    targets = (Target(weight=1, modelRewrite="a"), Target(weight=3, modelRewrite="b"))

    class Fixed:
        def __init__(self, value):
            self.value = value

        def randrange(self, stop):
            assert stop == 4
            return self.value

    assert [pick_target(targets, Fixed(v)).modelRewrite for v in range(4)] == ["a", "b", "b", "b"]


def test_reapplying_an_object_updates_it():
    doc = (
        "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: o}\n"
        f"spec: {{priority: %d, poolRef: {{name: {POOL}}}}}\n"
    )
    state = parse_objectives(doc % 1 + "---\n" + doc % 5, pool_name=POOL)
    assert state.objectives.priority("o") == 5


def test_kind_list_is_accepted():
    items = [d for d in HERMETIC.split("---") if "InferenceObjective" in d][:1]
    text = "apiVersion: v1\nkind: List\nitems:\n" + textwrap.indent(
        "- " + items[0].strip().replace("\n", "\n  "), ""
    )
    assert parse_objectives(text, pool_name=POOL).objectives.priority("sql-lora") == 2


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        (
            rewrite("w", "- targets: [{weight: 5, modelRewrite: a}, {modelRewrite: b}]"),
            "documents[0].spec.rules[0]",
            "all targets of a rule or on none",
        ),
        (
            rewrite("w", "- targets: [{weight: 0, modelRewrite: a}]"),
            "documents[0].spec.rules[0].targets[0].weight",
            "greater than or equal to 1",
        ),
        (
            rewrite("w", "- targets: [{weight: 1000001, modelRewrite: a}]"),
            "documents[0].spec.rules[0].targets[0].weight",
            "less than or equal to 1000000",
        ),
        (
            rewrite("w", "- matches: [{model: {type: Prefix, value: a}}]"),
            "documents[0].spec.rules[0].matches[0].model.type",
            "'Exact'",
        ),
        (
            rewrite("w", "- matches: [{model: {value: ''}}]"),
            "documents[0].spec.rules[0].matches[0].model.value",
            "at least 1 character",
        ),
        (
            rewrite("w", "- targets: [{modelRewrite: a, weigth: 3}]"),
            "documents[0].spec.rules[0].targets[0].weigth",
            "unknown field",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: o}\n"
            "spec: {priority: high, poolRef: {name: p}}\n",
            "documents[0].spec.priority",
            "integer",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: o}\n"
            "spec: {priority: 1}\n",
            "documents[0].spec.poolRef",
            "missing",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: InferenceObjective\nmetadata: {name: o}\n"
            "spec: {poolRef: {name: p}}\n",
            "documents[0].apiVersion",
            "llm-d.ai/v1alpha2",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjectiv\nmetadata: {name: o}\n",
            "documents[0].kind",
            "InferenceObjective or InferenceModelRewrite",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: Bad_Name}\n"
            "spec: {poolRef: {name: p}}\n",
            "documents[0].metadata.name",
            "DNS",
        ),
        ("- a\n- b\n", "documents[0]", "mapping"),
    ],
)
def test_bad_manifests_name_the_field(doc, field, expected):
    with pytest.raises(ConfigError) as info:
        parse_objectives(doc, "objectives.yaml", pool_name="p")
    assert info.value.field == field, str(info.value)
    assert expected in info.value.expected, str(info.value)
    assert str(info.value).startswith("objectives.yaml: ")


def test_invalid_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        parse_objectives("a: [\n", "f.yaml")


# ---------------------------------------------------------------------------- file watching


def _write(path, text):
    path.write_text(text)
    stat = path.stat()  # make the change visible even on coarse mtime clocks
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_bad_file_at_start_raises(tmp_path):
    path = tmp_path / "objectives.yaml"
    path.write_text("kind: InferenceObjective\napiVersion: llm-d.ai/v1alpha2\n")
    with pytest.raises(ConfigError, match=str(path)):
        ObjectivesFile(path, POOL)
    with pytest.raises(ConfigError, match="cannot read"):
        ObjectivesFile(tmp_path / "missing.yaml", POOL)


def test_reload_applies_changes_and_keeps_last_good_state(tmp_path, caplog):
    path = tmp_path / "objectives.yaml"
    path.write_text(HERMETIC)
    watched = ObjectivesFile(path, POOL)
    assert watched.objectives.priority("sql-lora") == 2
    assert watched.reload_if_changed() is False  # unchanged: nothing to do

    _write(path, HERMETIC.replace("priority: 2", "priority: 3"))
    assert watched.reload_if_changed() is True
    assert watched.objectives.priority("sql-lora") == 3

    _write(path, HERMETIC.replace("priority: 2", "priority: two"))
    assert watched.reload_if_changed() is False
    assert watched.objectives.priority("sql-lora") == 3  # last good state kept
    assert watched.last_error is not None and "spec.priority" in watched.last_error.field
    assert str(path) in caplog.text

    path.unlink()
    assert watched.reload_if_changed() is False
    assert watched.objectives.priority("sql-lora") == 3


async def test_watch_task_reloads_without_blocking_the_loop(tmp_path):
    path = tmp_path / "objectives.yaml"
    path.write_text(HERMETIC)
    watched = ObjectivesFile(path, POOL)
    task = asyncio.create_task(watched.watch(interval=0.01))
    try:
        _write(path, HERMETIC.replace("priority: 10", "priority: 11"))
        for _ in range(300):
            if watched.objectives.priority("critical") == 11:
                break
            await asyncio.sleep(0.01)
        assert watched.objectives.priority("critical") == 11
        assert watched.reloads == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_load_objectives_from_path(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text(HERMETIC)
    assert len(load_objectives(path, pool_name=POOL).objectives) == 3
