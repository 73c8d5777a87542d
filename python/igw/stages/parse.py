"""Parse stage: body -> model, prompt, stream; headers -> objective, priority, fairness, subset.

The body is parsed once (``igw.parsing``). The objective header names an InferenceObjective
whose priority the request gets (0 when unset or unknown, as the reference). The candidate
subset comes from Envoy's ``envoy.lb.subset_hint`` metadata (a list, or a comma-separated
string as the conformance picker also accepts) unless the subset filter is disabled; the
conformance steering header ``test-epp-endpoint-selection`` wins over the metadata.
"""

from __future__ import annotations

import asyncio
from typing import Any

from igw.parsing import OPENAI_PARSER, ParserRegistry, parse_with, read_openai
from igw.pipeline import Request
from igw.stages.protocols import ObjectiveLookup

OBJECTIVE_HEADERS = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_HEADERS = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
DEFAULT_FAIRNESS_ID = "default-flow"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"
OFFLOAD_BYTES = 4 << 20  # bodies above this are decoded off the event loop
# every header apply_headers reads
_READ_HEADERS = frozenset((*OBJECTIVE_HEADERS, *FAIRNESS_HEADERS, TEST_SELECTION_HEADER))


def split_addresses(value: Any) -> list[str] | None:
    """A subset value (list of strings or comma string) as a list; None when not usable."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, str):
                out.extend(part.strip() for part in item.split(",") if part.strip())
        return out
    return None


def subset_of(request: Request, *, use_metadata: bool = True) -> list[str] | None:
    """The allowed endpoints for ``request`` or None for "the whole pool"."""
    steering = request.headers.get(TEST_SELECTION_HEADER)
    if steering is not None:
        return split_addresses(steering)
    if not use_metadata:
        return None
    namespace = request.metadata.get(SUBSET_NAMESPACE)
    if isinstance(namespace, dict) and SUBSET_KEY in namespace:
        return split_addresses(namespace[SUBSET_KEY]) or []
    return None


def apply_headers(
    request: Request, objectives: ObjectiveLookup | None, *, use_subset_metadata: bool = True
) -> None:
    """Objective/priority, fairness id and subset from headers and metadata (no body needed)."""
    if _READ_HEADERS.isdisjoint(request.headers):
        # the usual request names none of them: one set test instead of five lookups in three
        # calls; what follows is what the general path below gives without those headers
        request.fairness_id = DEFAULT_FAIRNESS_ID
        if use_subset_metadata and request.metadata:
            request.subset = subset_of(request)
        else:
            request.subset = None
        return
    objective = request.header(*OBJECTIVE_HEADERS)
    if objective:
        request.objective = objective
        priority = objectives.priority(objective) if objectives is not None else None
        request.priority = int(priority) if priority is not None else 0
    request.fairness_id = request.header(*FAIRNESS_HEADERS) or DEFAULT_FAIRNESS_ID
    if TEST_SELECTION_HEADER in request.headers or (use_subset_metadata and request.metadata):
        request.subset = subset_of(request, use_metadata=use_subset_metadata)
    else:
        request.subset = None  # no steering header, no metadata: the whole pool


class ParseStage:
    """Fills the parse fields of ``Request``; bad bodies raise 400 ``InferenceError``."""

    name = "parse"

    def __init__(
        self,
        parsers: ParserRegistry | None = None,
        objectives: ObjectiveLookup | None = None,
        *,
        use_subset_metadata: bool = True,
    ) -> None:
        self.parsers = parsers or ParserRegistry.from_types()
        self.objectives = objectives
        self.use_subset_metadata = use_subset_metadata

    def process_now(self, request: Request) -> bool:
        """``apply`` at once unless the body is large enough to go to a thread."""
        if len(request.body) > OFFLOAD_BYTES:
            return False
        self.apply(request)
        return True

    async def process(self, request: Request) -> None:
        if len(request.body) > OFFLOAD_BYTES:
            # Decoding tens of MB of JSON takes long enough to stall every other stream on the
            # event loop; in a thread the loop keeps running between GIL switches.
            await asyncio.to_thread(self.apply, request)
        else:
            self.apply(request)

    def apply(self, request: Request) -> None:
        """Synchronous body of ``process`` (no awaits needed: everything is in memory)."""
        path = request.path
        parsers = self.parsers
        parser = parsers.resolved.get(path) or parsers.resolve(path)
        if parser == OPENAI_PARSER:
            # the usual parser: its fields go straight into the request, with no ParsedBody
            (
                api,
                request.kind,
                request.body_json,
                request.incoming_model,
                request.prompt,
                request.prompt_tokens_estimate,
                request.stream,
                request.cache_salt,
                limit,
            ) = read_openai(path, request.body)
            attrs = request.attrs
            attrs["parser"] = OPENAI_PARSER
            attrs["api"] = api
            if limit is not None:
                attrs["max_output_tokens"] = limit
        else:
            parsed = parse_with(parser, path, request.body)
            request.kind = parsed.kind
            request.body_json = parsed.body_json
            request.incoming_model = parsed.model
            request.prompt = parsed.prompt
            request.prompt_tokens_estimate = parsed.prompt_tokens_estimate
            request.stream = parsed.stream
            request.cache_salt = parsed.cache_salt
            request.attrs["parser"] = parsed.parser
            request.attrs["api"] = parsed.api
            if parsed.max_output_tokens is not None:
                request.attrs["max_output_tokens"] = parsed.max_output_tokens
            if parsed.skip_response:
                request.attrs["skip_response"] = True
        apply_headers(request, self.objectives, use_subset_metadata=self.use_subset_metadata)
