"""Endpoint discovery outside Kubernetes: a static list, or a file watched for changes.

Both set a ``Pool``'s membership wholesale (removed endpoints stop being scraped, new ones
start). The file form lets an operator add and drain replicas without restarting igw; a
reload that fails to parse keeps the previous set and logs the file, line and problem, so a
half-saved edit never empties the pool.

File formats (chosen by the first meaningful line):

* one ``ip:port`` per line; ``#`` starts a comment; blank lines are ignored;
* a YAML list (or ``endpoints:`` holding one) whose items are ``"ip:port"`` strings or
  mappings ``{address: ip:port, engine: sglang, labels: {k: v}, name: pod-a}``. The engine
  may also be given as the label ``llm-d.ai/engine-type``, as in Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

from igw.datalayer.engines import DEFAULT_ENGINE, ENGINE_LABEL, ENGINES
from igw.datastore import normalize_address

if TYPE_CHECKING:
    from igw.datastore import Pool

log = logging.getLogger("igw.datalayer.discovery")


class DiscoveryError(ValueError):
    """An endpoint list is invalid; the message names the source, the entry and the problem."""


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """One endpoint as discovery describes it."""

    address: str
    engine: str = DEFAULT_ENGINE
    labels: tuple[tuple[str, str], ...] = ()
    name: str = ""


def apply(pool: Pool, specs: Iterable[EndpointSpec]) -> None:
    """Make the pool's membership exactly ``specs`` (with their attributes)."""
    specs = list(specs)
    wanted = {spec.address for spec in specs}
    for endpoint in pool.endpoints():
        if endpoint.address not in wanted:
            pool.remove(endpoint.address)
    for spec in specs:
        pool.upsert(
            spec.address,
            engine=spec.engine,
            labels=dict(spec.labels),
            name=spec.name or spec.address,
        )
    pool.synced = True


def _check_engine(engine: str, where: str) -> str:
    if engine not in ENGINES:
        raise DiscoveryError(
            f"{where}: unknown engine {engine!r}; expected one of {sorted(ENGINES)}"
        )
    return engine


def _address(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise DiscoveryError(f"{where}: expected an 'ip:port' string, got {type(text).__name__}")
    try:
        return normalize_address(text)
    except ValueError as exc:
        raise DiscoveryError(f"{where}: {exc}") from None


def parse_list(text: str, source: str = "--endpoints") -> list[EndpointSpec]:
    """Parse ``ip:port,ip:port`` (the ``--endpoints`` flag)."""
    specs = []
    for i, item in enumerate(text.split(",")):
        if not item.strip():
            continue
        specs.append(EndpointSpec(_address(item, f"{source} entry {i + 1} ({item.strip()!r})")))
    return _dedupe(specs, source)


def _dedupe(specs: list[EndpointSpec], source: str) -> list[EndpointSpec]:
    seen: set[str] = set()
    for spec in specs:
        if spec.address in seen:
            raise DiscoveryError(f"{source}: endpoint {spec.address} is listed twice")
        seen.add(spec.address)
    return specs


def parse_file_text(text: str, source: str) -> list[EndpointSpec]:
    """Parse an endpoints file (either format); raise ``DiscoveryError`` naming the problem."""
    meaningful = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if meaningful and (meaningful[0].startswith("-") or meaningful[0].startswith("endpoints:")):
        return _parse_yaml(text, source)
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if content:
            specs.append(EndpointSpec(_address(content, f"{source} line {number}")))
    return _dedupe(specs, source)


def _parse_yaml(text: str, source: str) -> list[EndpointSpec]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{source}: invalid YAML: {exc}") from None
    if isinstance(document, dict):
        unknown = set(document) - {"endpoints"}
        if unknown:
            raise DiscoveryError(f"{source}: unknown keys {sorted(unknown)}; expected 'endpoints'")
        document = document.get("endpoints") or []
    if not isinstance(document, list):
        raise DiscoveryError(f"{source}: expected a list of endpoints")
    specs = []
    for i, item in enumerate(document):
        where = f"{source} endpoints[{i}]"
        if isinstance(item, str):
            specs.append(EndpointSpec(_address(item, where)))
            continue
        if not isinstance(item, dict):
            raise DiscoveryError(f"{where}: expected 'ip:port' or a mapping with 'address'")
        unknown = set(item) - {"address", "engine", "labels", "name"}
        if unknown:
            raise DiscoveryError(
                f"{where}: unknown keys {sorted(unknown)}; expected address, engine, labels, name"
            )
        if "address" not in item:
            raise DiscoveryError(f"{where}: missing 'address' (ip:port)")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in labels.items()
        ):
            raise DiscoveryError(f"{where}.labels: expected a mapping of string keys to values")
        labels = {k: str(v) for k, v in labels.items()}
        engine = item.get("engine") or labels.get(ENGINE_LABEL) or DEFAULT_ENGINE
        if not isinstance(engine, str):
            raise DiscoveryError(f"{where}.engine: expected a string")
        _check_engine(engine, f"{where}.engine")
        labels.setdefault(ENGINE_LABEL, engine)
        if labels[ENGINE_LABEL] != engine:
            raise DiscoveryError(
                f"{where}: engine {engine!r} contradicts label {ENGINE_LABEL}="
                f"{labels[ENGINE_LABEL]!r}"
            )
        name = item.get("name", "")
        if not isinstance(name, str):
            raise DiscoveryError(f"{where}.name: expected a string")
        specs.append(
            EndpointSpec(
                address=_address(item["address"], f"{where}.address"),
                engine=engine,
                labels=tuple(sorted(labels.items())),
                name=name,
            )
        )
    return _dedupe(specs, source)


class StaticDiscovery:
    """A fixed endpoint list (``--endpoints ip:port,...``); validated when constructed."""

    def __init__(self, pool: Pool, endpoints: str | Iterable[str]) -> None:
        self.pool = pool
        text = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
        self.specs = parse_list(text)

    async def start(self) -> None:
        apply(self.pool, self.specs)

    async def stop(self) -> None:
        """Nothing to release; the pool keeps its endpoints."""


class FileDiscovery:
    """An endpoints file, polled every ``poll_interval`` seconds and reloaded on change.

    ``start`` raises ``DiscoveryError`` if the file is missing or invalid (a bad config fails
    at start); later bad reloads only log and keep the previous endpoints. Polling the
    file's stat is chosen over inotify: it works on every filesystem, including the
    symlink-swapped files of a Kubernetes ConfigMap volume.
    """

    def __init__(self, pool: Pool, path: str | os.PathLike[str], *, poll_interval: float = 1.0):
        if poll_interval <= 0:
            raise ValueError(f"FileDiscovery poll_interval must be > 0, got {poll_interval!r}")
        self.pool = pool
        self.path = os.fspath(path)
        self.poll_interval = poll_interval
        self.reloads = 0  # successful loads
        self.errors = 0  # failed reloads
        self.last_error = ""
        self._signature: tuple[float, int, int] | None = None
        self._text: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        signature, text = await asyncio.to_thread(self._read)
        specs = parse_file_text(text, self.path)
        self._accept(signature, text, specs)
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"igw-endpoints-file {self.path}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _read(self) -> tuple[tuple[float, int, int], str]:
        try:
            stat = os.stat(self.path)
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise DiscoveryError(f"{self.path}: endpoints file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DiscoveryError(f"{self.path}: cannot read endpoints file: {exc}") from None
        return (stat.st_mtime, stat.st_size, stat.st_ino), text

    def _stat(self) -> tuple[float, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime, stat.st_size, stat.st_ino

    def _accept(self, signature, text: str, specs: list[EndpointSpec]) -> None:
        self._signature = signature
        self._text = text
        before = {e.address for e in self.pool.endpoints()}
        apply(self.pool, specs)
        after = {spec.address for spec in specs}
        self.reloads += 1
        if self.reloads > 1:
            log.info(
                "reloaded %s: %d endpoints (+%d -%d)",
                self.path, len(after), len(after - before), len(before - after),
            )  # fmt: skip
        self.last_error = ""

    async def reload(self) -> bool:
        """Re-read the file now if it changed; True when a new endpoint set was applied."""
        signature = await asyncio.to_thread(self._stat)
        if signature == self._signature:
            return False
        try:
            signature, text = await asyncio.to_thread(self._read)
            if text == self._text:
                self._signature = signature
                return False
            specs = parse_file_text(text, self.path)
        except DiscoveryError as exc:
            self._signature = signature  # do not re-log the same broken file every poll
            self.errors += 1
            self.last_error = str(exc)
            log.error(
                "endpoints file not reloaded, keeping the previous %d endpoints: %s",
                len(self.pool), exc,
            )  # fmt: skip
            return False
        self._accept(signature, text, specs)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.reload()
            except Exception:  # never let the watcher die silently
                log.exception("endpoints file watcher: unexpected error reading %s", self.path)
