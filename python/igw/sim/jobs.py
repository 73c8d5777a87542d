"""Generation requests for the simulator: validate an OpenAI body, turn it into an engine
``Seq``, and render the pieces of the OpenAI response that depend on it.

The answer's length is fixed by the prompt (``text.answer_plan``) unless ``max_tokens`` or
``ignore_eos`` say otherwise; the prompt's full blocks are hashed here, once, so the engine
only compares integers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from igw.sim import protocol, text
from igw.sim.model import Seq
from igw.sim.protocol import ChatRequest, CompletionRequest, RequestError

if TYPE_CHECKING:
    from igw.sim.replica import SimReplica

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) legacy-completions default


class Job:
    """A validated generation request, ready to run."""

    __slots__ = (
        "break_after",
        "chat",
        "continuous_usage",
        "created",
        "model",
        "prompt_tokens",
        "rid",
        "seq",
        "start_word",
        "stream",
        "usage_chunk",
    )

    def __init__(self) -> None:
        self.break_after: int | None = None


def resolve_model(replica: SimReplica, model: str | None) -> tuple[str, str | None]:
    """(served name, LoRA adapter or None) for a request's ``model``; 404 if unknown."""
    model = model if model is not None else replica.models[0]
    if model in replica.models:
        return model, None
    if model in replica.loras:
        return model, model
    raise RequestError(404, f"The model `{model}` does not exist.", param="model")


def prepare(replica: SimReplica, raw: bytes, chat: bool) -> Job:
    """Validate a generation request and turn it into an engine ``Seq`` (``RequestError``
    for a client error): prompt text and tokens, block hashes, answer length, fault roll."""
    params = replica.params
    req = protocol.parse(ChatRequest if chat else CompletionRequest, raw)
    model, lora = resolve_model(replica, req.model)
    if chat:
        prompt = chat_prompt(req)
        prompt_tokens = text.estimate_tokens(prompt, params.bytes_per_token)
        max_tokens = req.max_completion_tokens or req.max_tokens
    else:
        prompt, prompt_tokens = completion_prompt(req.prompt, params.bytes_per_token)
        max_tokens = req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
    natural, start = text.answer_plan(prompt, params.output_len_min, params.output_len_max)
    natural = max(natural, req.min_tokens)
    if req.ignore_eos or (max_tokens is not None and natural >= max_tokens):
        target = max_tokens if max_tokens is not None else natural
        reason = "length"
    else:
        target, reason = natural, "stop"
    problem = replica.engine.check(prompt_tokens, max_tokens or target, lora)
    if problem is not None:
        raise RequestError(400, problem, param="messages" if chat else "prompt")

    seed = text.chain_seed(lora, req.cache_salt)
    block_bytes = params.block_bytes
    bs = params.block_size
    hashes = text.block_hashes(prompt, block_bytes, seed, limit=prompt_tokens // bs)

    def full_hasher(kv_tokens: int) -> list[int]:
        answer = text.filler(start, 0, max(kv_tokens - prompt_tokens, 0)).encode()
        return text.block_hashes(prompt + answer, block_bytes, seed, limit=kv_tokens // bs)

    job = Job()
    job.seq = Seq(
        prompt_tokens, hashes, target, lora=lora, stop_reason=reason, full_hasher=full_hasher
    )
    job.chat = chat
    job.model = model
    job.prompt_tokens = prompt_tokens
    job.start_word = start
    job.stream = bool(req.stream)
    opts = req.stream_options
    job.usage_chunk = bool(opts is not None and opts.include_usage)
    job.continuous_usage = bool(job.usage_chunk and opts.continuous_usage_stats)
    job.created = int(time.time())
    job.rid = f"{'chatcmpl' if chat else 'cmpl'}-sim{replica.index}-{job.seq.id}"
    if replica.faults.error_rate > 0 and replica.rng.random() < replica.faults.error_rate:
        job.break_after = replica.rng.randint(1, target - 1) if target > 1 else 0
    return job


def chat_prompt(req: ChatRequest) -> bytes:
    """The rendered chat prompt as bytes (see ``text.chat_text``)."""
    messages = [{"role": m.role, "content": _content(m.content)} for m in req.messages]
    return text.chat_text(messages).encode("utf-8", "surrogatepass")


def _content(content) -> str | list | None:
    """A validated message content back in the plain shape ``text.chat_text`` reads."""
    if isinstance(content, list):
        return [{"type": p.type, "text": p.text} for p in content]
    return content


def completion_prompt(prompt, bytes_per_token: int) -> tuple[bytes, int]:
    """(prompt bytes, prompt tokens) of a completions ``prompt``; one prompt per request."""
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError(400, "prompt: expected a non-empty string", param="prompt")
        data = prompt.encode("utf-8", "surrogatepass")
        return data, text.estimate_tokens(data, bytes_per_token)
    if not prompt:
        raise RequestError(400, "prompt: expected a non-empty list", param="prompt")
    if isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise RequestError(
                400,
                f"prompt: the simulator serves one prompt per request, got {len(prompt)}",
                param="prompt",
            )
        return completion_prompt(prompt[0], bytes_per_token)
    return text.token_ids_bytes(prompt), len(prompt)


def choice(job: Job, answer: str) -> dict:
    """The single choice of a non-streamed response."""
    seq = job.seq
    if job.chat:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": answer, "tool_calls": []},
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
    return {
        "index": 0,
        "text": answer,
        "logprobs": None,
        "finish_reason": seq.finish_reason,
        "stop_reason": None,
    }


def usage_text(job: Job, completion_tokens: int) -> str:
    """Running usage as JSON text, for ``continuous_usage_stats`` chunks (no dumps call)."""
    return (
        f'{{"prompt_tokens":{job.prompt_tokens},'
        f'"total_tokens":{job.prompt_tokens + completion_tokens},'
        f'"completion_tokens":{completion_tokens}}}'
    )


def usage(job: Job) -> dict:
    """The final usage block, with the prefix-cache hit as ``cached_tokens``."""
    seq = job.seq
    return {
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": job.prompt_tokens + seq.output,
        "completion_tokens": seq.output,
        "prompt_tokens_details": {"cached_tokens": seq.cached_tokens or 0},
    }
