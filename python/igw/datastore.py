"""The pool datastore: which endpoints exist, their addresses, and the core state behind them.

One ``Pool`` per InferencePool. It owns the core's ``EndpointTable``, ``PrefixIndex`` and
``Scheduler`` and the mapping between endpoint addresses ("ip:port") and the core's dense
ids. Discovery (static list, watched file, Kubernetes) calls ``upsert``/``remove``; the data
layer subscribes to membership changes to start and stop one scraper per endpoint; the
schedule stage reads ``endpoint_by_id`` to turn picked ids into addresses.

Everything here runs on the event loop thread; the core objects themselves are thread-safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from igw import _core

DEFAULT_TARGET_PORT = 8000
MAX_ENDPOINTS = 16384


@dataclasses.dataclass(eq=False)
class Endpoint:
    """One model-server replica (a pod and one of its target ports)."""

    id: int
    address: str  # "ip:port", exactly what goes into x-gateway-destination-endpoint
    name: str = ""  # pod name (or the address outside Kubernetes)
    namespace: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    engine: str = "vllm"  # which metric names to scrape (vllm, sglang, trtllm-serve, ...)
    scheme: str = "http"
    models: frozenset[str] = frozenset()  # model names it serves, when known

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.address}"


MembershipListener = Callable[[str, Endpoint], None]  # ("added" | "removed", endpoint)


def normalize_address(address: str, default_port: int = DEFAULT_TARGET_PORT) -> str:
    """Accept "ip:port", "ip", "http://ip:port[/...]"; return "ip:port" or raise ValueError."""
    text = address.strip()
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.split("/", 1)[0]
    if not text:
        raise ValueError(f"endpoint address {address!r} is empty; expected ip:port")
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"endpoint address {address!r}: port must be 1..65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"endpoint address {address!r} has no host; expected ip:port")
    if any(ch.isspace() or ch in ",;@?#" for ch in host):
        raise ValueError(
            f"endpoint address {address!r}: host {host!r} is not an IP or hostname; "
            "expected ip:port"
        )
    if ":" in host:  # IPv6 literals keep their brackets, as Envoy writes them
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class Pool:
    """An InferencePool's endpoints and routing state."""

    def __init__(
        self,
        name: str = "default",
        namespace: str = "default",
        *,
        max_endpoints: int = MAX_ENDPOINTS,
        default_lru_blocks: int = 31250,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.table = _core.EndpointTable(max_endpoints)
        self.index = _core.PrefixIndex(max_endpoints, default_lru_blocks)
        self.scheduler = _core.Scheduler(self.table, self.index, seed)
        self._by_address: dict[str, Endpoint] = {}
        self._by_id: dict[int, Endpoint] = {}
        # by_id is the dict's own lookup (the same call, no Python frame): the scheduling
        # engine turns every pick's ranked ids into endpoints with it
        self.by_id: Callable[[int], Endpoint | None] = self._by_id.get
        self._listeners: list[MembershipListener] = []
        self.synced = False  # set once discovery has delivered its first full view

    # -- membership -----------------------------------------------------------------
    def subscribe(self, listener: MembershipListener) -> None:
        self._listeners.append(listener)
        for endpoint in self._by_address.values():
            listener("added", endpoint)

    def unsubscribe(self, listener: MembershipListener) -> None:
        """Stop delivering membership events to ``listener`` (no-op if it is not subscribed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def upsert(self, address: str, **attributes) -> Endpoint:
        """Add an endpoint or update its attributes (labels, name, engine, models)."""
        address = normalize_address(address)
        endpoint = self._by_address.get(address)
        if endpoint is not None:
            for key, value in attributes.items():
                setattr(endpoint, key, value)
            return endpoint
        endpoint_id = self.table.add()
        attributes.setdefault("name", address)
        endpoint = Endpoint(id=endpoint_id, address=address, **attributes)
        self._by_address[address] = endpoint
        self._by_id[endpoint_id] = endpoint
        for listener in self._listeners:
            listener("added", endpoint)
        return endpoint

    def remove(self, address: str) -> Endpoint | None:
        endpoint = self._by_address.pop(normalize_address(address), None)
        if endpoint is None:
            return None
        del self._by_id[endpoint.id]
        self.index.remove_endpoint(endpoint.id)
        self.table.remove(endpoint.id)
        for listener in self._listeners:
            listener("removed", endpoint)
        return endpoint

    # -- lookups ----------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return list(self._by_address.values())

    def by_address(self, address: str) -> Endpoint | None:
        return self._by_address.get(address)

    def __len__(self) -> int:
        return len(self._by_address)

    def ready_endpoints(self) -> list[Endpoint]:
        snapshot = self.table.snapshot()
        return [e for e in self._by_address.values() if snapshot.ready[e.id]]

    def candidate_mask(self, addresses: Iterable[str]) -> np.ndarray:
        """Bool mask over endpoint ids for the given "ip[:port]" strings (subset hints).

        An entry without a port matches every port of that IP (the conformance suite's
        ``test-epp-endpoint-selection`` header allows that).
        """
        mask = np.zeros(max(self.table.high_water, 1), dtype=np.bool_)
        for raw in addresses:
            item = raw.strip()
            if not item:
                continue
            if item in self._by_address:
                mask[self._by_address[item].id] = True
                continue
            for endpoint in self._by_address.values():
                if endpoint.host == item:
                    mask[endpoint.id] = True
        return mask
