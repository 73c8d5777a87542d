"""Which HTTP front end ``igw serve`` uses: httptools by default, aiohttp on request."""

from __future__ import annotations

import pytest

from igw.gateway import app as gateway_app
from igw.gateway.app import Limits, resolve_frontend


def test_auto_is_the_default_and_means_httptools_when_installed() -> None:
    assert Limits().frontend == "auto"
    assert resolve_frontend("auto") == "httptools"
    assert resolve_frontend("aiohttp") == "aiohttp"


def test_auto_falls_back_to_aiohttp_without_httptools(monkeypatch) -> None:
    from igw.gateway import upstream

    monkeypatch.setattr(upstream, "httptools", None)
    assert gateway_app.resolve_frontend("auto") == "aiohttp"


def test_an_unknown_front_end_names_the_field_and_the_choices() -> None:
    with pytest.raises(ValueError, match="frontend: expected one of auto, httptools, aiohttp"):
        resolve_frontend("nginx")


def test_the_command_line_defaults_to_auto() -> None:
    import argparse

    from igw.gateway.command import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--sim", "1"]).frontend == "auto"


def test_generated_request_ids_are_32_hex_digits_and_distinct() -> None:
    from igw.gateway.app import new_request_id

    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
