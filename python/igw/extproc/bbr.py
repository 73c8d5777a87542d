"""Body-based routing: copy the OpenAI body's ``model`` into ``X-Gateway-Model-Name``.

An ext_proc service placed before route selection so HTTPRoutes can match the model name
like a path (one InferencePool per model, canary splits by route weights). Per stream: the
request headers' reply is deferred until the body has arrived (FULL_DUPLEX_STREAMED); then
igw answers with the header mutation plus ``clear_route_cache: true`` (so Envoy re-runs route
matching on the new header) and the unchanged body in 62,000-byte chunks. A body that is not
a JSON object with a string ``model`` passes through untouched (no header, no error): routing
then falls back to whatever the routes match without it. Response-phase messages, if Envoy
sends them, are passed through unchanged.
"""

from __future__ import annotations

import json
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from igw.extproc import messages as msgs
from igw.extproc.director import StreamError

log = logging.getLogger("igw.bbr")

MODEL_HEADER = "X-Gateway-Model-Name"


def model_of(body: bytes) -> str | None:
    """The body's ``model`` when it is a JSON object with a non-empty string model."""
    if b'"model"' not in body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        model = data.get("model")
        if isinstance(model, str) and model:
            return model
    return None


class BbrStream:
    """One stream: buffer the request body, then answer headers + body.

    It has the shape igw's own HTTP/2 transport expects of a stream (``handle_now``,
    ``handle``, ``close``, ``done``; ``h2_transport.py``), so ``igw bbr
    --grpc-transport=igw`` serves it without grpc.aio."""

    done = False  # the stream ends when Envoy closes it

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers_seen = False
        self.request_done = False
        self.overflow = False

    def handle(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            self.headers_seen = True
            if message.request_headers.end_of_stream:
                self.request_done = True
                return [msgs.request_headers_response((), clear_route_cache=False)]
            return []
        if kind == "request_body":
            return self._body(message.request_body)
        if kind == "request_trailers":
            if self.request_done:
                return []
            return [*self._finish_request(), msgs.trailers_response("request")]
        if kind == "response_headers":
            return [msgs.response_headers_response(())]
        if kind == "response_body":
            body = message.response_body
            return [msgs.body_response(body.body, body.end_of_stream, phase="response")]
        if kind == "response_trailers":
            return [msgs.trailers_response("response")]
        return []

    def handle_now(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        """``handle`` with an out-of-order body as the gRPC error grpc.aio's servicer sends."""
        try:
            return self.handle(message)
        except ValueError as error:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None

    def close(self, *, broken: bool) -> None:
        """Nothing is held between messages beyond the body buffer."""
        self.chunks = []

    def _body(self, body) -> list[msgs.ProcessingResponse]:
        if not self.headers_seen or self.request_done:
            raise ValueError("request body out of order")
        if body.body:
            self.size += len(body.body)
            self.chunks.append(body.body)
            if self.size > self.max_body_bytes:
                self.overflow = True
        if not body.end_of_stream:
            return []
        return self._finish_request()

    def _finish_request(self) -> list[msgs.ProcessingResponse]:
        self.request_done = True
        whole = b"".join(self.chunks)
        self.chunks = []
        model = None if self.overflow else model_of(whole)
        if model is None:
            headers_reply = msgs.request_headers_response((), clear_route_cache=False)
        else:
            headers_reply = msgs.request_headers_response(
                [(MODEL_HEADER, model)], clear_route_cache=True
            )
        return [headers_reply, *msgs.body_responses(whole, phase="request")]


class BbrProcessor:
    """What igw's HTTP/2 transport asks of its director: a stream per call. Body-based
    routing has no observer streams: a message in observability mode is read and dropped."""

    def __init__(self, max_body_bytes: int = 64 << 20) -> None:
        self.max_body_bytes = max_body_bytes

    def stream(self) -> BbrStream:
        return BbrStream(self.max_body_bytes)

    def observer(self) -> NullObserver:
        return NullObserver()


class NullObserver:
    """An observer stream nobody reads (observability mode sent to the body-based router)."""

    finished_early = False

    def handle(self, message: msgs.ProcessingRequest) -> None:
        pass

    def close(self, *, broken: bool) -> None:
        pass

    def give_up(self) -> None:
        pass


class BbrServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, max_body_bytes: int = 64 << 20) -> None:
        self.max_body_bytes = max_body_bytes

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        stream = BbrStream(self.max_body_bytes)
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            try:
                replies = stream.handle(message)
            except ValueError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            for reply in replies:
                await context.write(reply)
