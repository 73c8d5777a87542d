"""build_guard: what each spec builds and how bad specs are reported."""

from __future__ import annotations

import sys
import types

import pytest

from igw.config import ConfigError
from igw.guard import build_guard
from igw.guard.moderation import ModerationCheck
from igw.guard.prompt import PromptCheck
from igw.guard.response import ResponseGuard


def test_empty_spec_builds_nothing():
    setup = build_guard({})
    assert setup.checks == [] and setup.response_checks == []


def test_full_spec_builds_checks_in_order():
    setup = build_guard({
        "log": "none",
        "prompt": {"maxChars": 10, "deny": [{"name": "d", "pattern": "x"}],
                   "moderation": {"url": "http://127.0.0.1:1/v1/moderations", "timeout": "500ms",
                                  "failMode": "closed", "categories": ["violence"]}},
        "response": {"pii": {"creditCards": "redact"}, "window": 64},
    })  # fmt: skip
    assert [type(c) for c in setup.checks] == [PromptCheck, ModerationCheck]
    assert setup.checks[1].timeout.total == 0.5 and setup.checks[1].fail_closed
    assert [type(c) for c in setup.response_checks] == [ResponseGuard]
    assert setup.response_checks[0].window == 64


def test_all_allow_builds_no_check():
    setup = build_guard({"prompt": {"pii": {"emails": "allow"}}, "response": {"window": 8}})
    assert setup.checks == [] and setup.response_checks == []


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"prompt": {"pii": {"emails": "drop"}}}, "guard.prompt.pii.emails", "'block'"),
        ({"prompt": {"deny": [{"name": "x", "pattern": "("}]}}, "guard.prompt.deny[0].pattern",
         "regular expression"),
        ({"prompt": {"deny": [{"pattern": "x"}]}}, "guard.prompt.deny[0].name", "missing"),
        ({"prompt": {"maxChars": 0}}, "guard.prompt.maxChars", "greater than 0"),
        ({"prompt": {"moderation": {"url": "ftp://x"}}}, "guard.prompt.moderation.url", "http"),
        ({"prompt": {"moderation": {"url": "http://x", "timeout": "soon"}}},
         "guard.prompt.moderation.timeout", "duration"),
        ({"prompt": {"moderation": {"url": "http://x", "failMode": "maybe"}}},
         "guard.prompt.moderation.failMode", "'open'"),
        ({"response": {"window": -1}}, "guard.response.window", "greater than or equal"),
        ({"respones": {}}, "guard.respones", "unknown field"),
        ({"log": "all"}, "guard.log", "'none'"),
        ({"plugins": [{"type": "no_colon"}]}, "guard.plugins[0].type", "pattern"),
    ],
)  # fmt: skip
def test_bad_spec_names_the_field(spec, field, words):
    with pytest.raises(ConfigError) as info:
        build_guard(spec, source="igw.yaml")
    assert info.value.field == field
    assert words in info.value.expected
    assert str(info.value).startswith("igw.yaml: field " + field)


def test_spec_must_be_a_mapping():
    with pytest.raises(ConfigError) as info:
        build_guard(["x"])  # type: ignore[arg-type]
    assert info.value.field == "guard"


# ------------------------------------------------------------------------------ plugins


class _PromptPlugin:
    def __init__(self, word: str = "forbidden") -> None:
        self.word = word

    async def check(self, request) -> None:
        return None


class _ResponsePlugin:
    def on_headers(self, request, status, headers) -> None: ...

    def on_chunk(self, request, chunk, end_of_stream) -> bytes:
        return chunk

    def on_finish(self, request) -> None: ...


class _SyncCheck:
    def check(self, request) -> None: ...


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("igw_guard_test_plugins")
    module.PromptPlugin = _PromptPlugin
    module.ResponsePlugin = _ResponsePlugin
    module.SyncCheck = _SyncCheck
    module.NOT_CALLABLE = 3
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_plugin_prompt_check_is_loaded_with_params(plugin_module):
    setup = build_guard({"plugins": [{"type": f"{plugin_module}:PromptPlugin",
                                      "params": {"word": "nope"}}]})  # fmt: skip
    assert len(setup.checks) == 1 and setup.checks[0].word == "nope"
    assert setup.response_checks == []


def test_plugin_response_stage_goes_to_response_checks(plugin_module):
    setup = build_guard({"plugins": [{"type": f"{plugin_module}:ResponsePlugin"}]})
    assert setup.checks == [] and len(setup.response_checks) == 1
    assert setup.response_checks[0].name == f"{plugin_module}:ResponsePlugin"


@pytest.mark.parametrize(
    ("type_", "field", "words"),
    [
        ("igw_no_such_module:X", "guard.plugins[0].type", "importable module"),
        ("{mod}:Missing", "guard.plugins[0].type", "'Missing'"),
        ("{mod}:NOT_CALLABLE", "guard.plugins[0].type", "'NOT_CALLABLE'"),
        ("{mod}:SyncCheck", "guard.plugins[0].type", "async def check"),
    ],
)
def test_plugin_errors_name_the_field(plugin_module, type_, field, words):
    with pytest.raises(ConfigError) as info:
        build_guard({"plugins": [{"type": type_.format(mod=plugin_module)}]})
    assert info.value.field == field and words in info.value.expected


def test_plugin_bad_params_name_the_params_field(plugin_module):
    with pytest.raises(ConfigError) as info:
        build_guard({"plugins": [{"type": f"{plugin_module}:PromptPlugin",
                                  "params": {"colour": "red"}}]})  # fmt: skip
    assert info.value.field == "guard.plugins[0].params"
    assert "colour" in info.value.expected


def test_plugin_that_is_neither_check_nor_stage_is_refused(plugin_module, monkeypatch):
    monkeypatch.setattr(sys.modules[plugin_module], "Nothing", object, raising=False)
    with pytest.raises(ConfigError) as info:
        build_guard({"plugins": [{"type": f"{plugin_module}:Nothing"}]})
    assert "async check(request)" in info.value.expected
