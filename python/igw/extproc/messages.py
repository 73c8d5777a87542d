"""Envoy ext_proc v3 messages igw sends and reads (built from the ``xds-protos`` classes).

Header values always go out in ``raw_value`` (bytes), as the reference does: Envoy rejects
non-UTF-8 in ``value`` and newer Envoys only honour ``raw_value``. Bodies are returned as
``streamed_response`` chunks of at most 62,000 bytes (the reference's ``BodyByteLimit``), the
last one carrying ``end_of_stream``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2

from igw.errors import InferenceError

BODY_CHUNK_BYTES = 62_000
LB_NAMESPACE = "envoy.lb"
SERVED_KEY = "x-gateway-destination-endpoint-served"

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse


def header_map_to_dict(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-cased name -> value (``value`` or, when empty, ``raw_value`` decoded as UTF-8)."""
    out: dict[str, str] = {}
    for header in header_map.headers:
        value = header.value or header.raw_value.decode("utf-8", "replace")
        out[header.key.lower()] = value
    return out


def metadata_to_dict(metadata: base_pb2.Metadata) -> dict[str, Any]:
    """``filter_metadata`` as plain dicts (namespace -> key -> value)."""
    if not metadata.filter_metadata:
        return {}
    return {
        namespace: json_format.MessageToDict(struct)
        for namespace, struct in metadata.filter_metadata.items()
    }


def served_endpoint(metadata: Mapping[str, Any]) -> str | None:
    """The endpoint Envoy actually used (``envoy.lb`` / ``...-served`` metadata), if given."""
    namespace = metadata.get(LB_NAMESPACE)
    if isinstance(namespace, dict):
        value = namespace.get(SERVED_KEY)
        if isinstance(value, str) and value:
            return value
    return None


def header_options(headers: Iterable[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, raw_value=value.encode("utf-8", "replace"))
        )
        for key, value in headers
    ]


def to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def request_headers_response(
    headers: Iterable[tuple[str, str]],
    dynamic_metadata: Mapping[str, Any] | None = None,
    *,
    clear_route_cache: bool = True,
) -> pb.ProcessingResponse:
    common = pb.CommonResponse(
        clear_route_cache=clear_route_cache,
        header_mutation=pb.HeaderMutation(set_headers=header_options(headers)),
    )
    response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
    if dynamic_metadata:
        response.dynamic_metadata.CopyFrom(to_struct(dynamic_metadata))
    return response


def response_headers_response(headers: Iterable[tuple[str, str]]) -> pb.ProcessingResponse:
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=header_options(headers))
    )
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))


def body_response(chunk: bytes, end_of_stream: bool, *, phase: str) -> pb.ProcessingResponse:
    """One streamed body chunk for ``phase`` "request" or "response"."""
    body = pb.BodyResponse(
        response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream)
            )
        )
    )
    if phase == "request":
        return pb.ProcessingResponse(request_body=body)
    return pb.ProcessingResponse(response_body=body)


def body_responses(body: bytes, *, phase: str) -> list[pb.ProcessingResponse]:
    """The whole body as 62,000-byte chunks, ``end_of_stream`` on the last (empty -> one)."""
    if len(body) <= BODY_CHUNK_BYTES:
        return [body_response(body, True, phase=phase)]
    view = memoryview(body)
    out = []
    for start in range(0, len(body), BODY_CHUNK_BYTES):
        end = start + BODY_CHUNK_BYTES
        out.append(body_response(bytes(view[start:end]), end >= len(body), phase=phase))
    return out


def trailers_response(phase: str) -> pb.ProcessingResponse:
    if phase == "request":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def immediate_response(error: InferenceError) -> pb.ProcessingResponse:
    """The reference's ImmediateResponse: status, ``inference error: <Code> - <msg>``, headers."""
    status = error.http_status
    if status is None:
        raise ValueError(f"{error!r} has no HTTP status; it must become a gRPC stream error")
    immediate = pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type]
        body=error.body_text().encode("utf-8", "replace"),
    )
    if error.headers:
        immediate.headers.CopyFrom(
            pb.HeaderMutation(set_headers=header_options(error.headers.items()))
        )
    return pb.ProcessingResponse(immediate_response=immediate)
