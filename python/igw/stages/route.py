"""Route stage: the target model (rewrite header, then InferenceModelRewrite rules).

Reference order (REFERENCE 1.6): the target starts as the ``x-llm-d-model-name-rewrite``
header (alias ``x-gateway-model-name-rewrite``) or the body's model; then a matching rewrite
rule for the *incoming* model overrides it (weighted random target). No target -> 400
``model not found in request body``. Only when the target differs from the body's model is
the decoded body edited and re-serialized (Go-style: keys sorted, compact); otherwise the
original bytes go upstream. Passthrough bodies (not decoded) are never rewritten.

LoRA: the target model is the adapter name the LoRA-affinity scorer looks for (the reference
passes the target model straight to it); ``is_adapter`` can narrow that to names the pool
knows as adapters.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from igw.errors import bad_request
from igw.parsing.gojson import fast_codec_exact, marshal
from igw.parsing.openai import exact_body_json
from igw.parsing.paths import OPENAI_PARSER
from igw.pipeline import Request
from igw.stages.protocols import RewriteLookup

REWRITE_HEADERS = ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")
_REWRITE_NAMES = frozenset(REWRITE_HEADERS)


def rule_name(rule: object) -> str:
    """A readable name for a rewrite rule object (its ``name`` when it has one)."""
    for attr in ("name", "resource_name"):
        value = getattr(rule, attr, None)
        if isinstance(value, str) and value:
            return value
    return "" if rule is None else str(rule)


class RouteStage:
    name = "route"

    def __init__(
        self,
        rewrites: RewriteLookup | None = None,
        *,
        rng: random.Random | None = None,
        on_rewrite: Callable[[str, str, str], None] | None = None,
        is_adapter: Callable[[str], bool] | None = None,
        pool_name: str = "",
    ) -> None:
        self.rewrites = rewrites
        self.rng = rng or random.Random()
        self.on_rewrite = on_rewrite
        self.is_adapter = is_adapter
        self.pool_name = pool_name

    async def process(self, request: Request) -> None:
        self.apply(request)

    def process_now(self, request: Request) -> bool:
        self.apply(request)
        return True

    def apply(self, request: Request) -> None:
        if self.pool_name and not request.pool_name:
            request.pool_name = self.pool_name
        body_json = request.body_json
        if body_json is None:  # passthrough: nothing to resolve or rewrite
            return
        incoming = request.incoming_model
        if _REWRITE_NAMES.isdisjoint(request.headers):  # the usual request: one set test
            target = incoming
        else:
            target = request.header(*REWRITE_HEADERS) or incoming
        if self.rewrites is not None and incoming:
            resolved = self.rewrites.resolve(incoming, self.rng)
            if resolved is not None:
                target, rule = resolved
                request.rewrite_rule = rule_name(rule)
                if self.on_rewrite is not None:
                    self.on_rewrite(request.rewrite_rule, incoming, target)
        if not target:
            raise bad_request("model not found in request body")
        request.target_model = target
        if self.is_adapter is None or self.is_adapter(target):
            request.lora = target
        if target != incoming or body_json.get("model") != target:
            # The OpenAI parser's fast decode differs from json's only by turning integers
            # beyond 64 bits into floats: when no float can be one, it is already exact (and
            # marshal may take its fast encoder), so the body is decoded again only then.
            plain = fast_codec_exact(body_json)
            if not plain and request.attrs.get("parser") == OPENAI_PARSER:
                body_json = request.body_json = exact_body_json(request.body, body_json)
            body_json["model"] = target
            request.out_body = marshal(body_json, plain=plain)
