"""The ``envoy.service.ext_proc.v3.ExternalProcessor`` servicer: a thin stream loop.

All request logic lives in ``Director`` / ``Stream``; this class only moves messages and maps
failures to gRPC at the edge: ``StreamError`` -> its status code, anything unexpected ->
``UNKNOWN`` (logged; Envoy then applies ``failure_mode_allow``). The ``finally`` closes the
stream's state whatever happened (end of stream, cancellation by Envoy or the client, error),
which releases the request's in-flight reservation. One broken stream never touches another:
each has its own ``Stream`` object and its exceptions end only its own RPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from igw.extproc import messages as msgs
from igw.extproc.director import Director, StreamError

log = logging.getLogger("igw.extproc")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class ExternalProcessorServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, director: Director) -> None:
        self.director = director

    async def Process(
        self,
        request_iterator: AsyncIterator[msgs.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = self.director.stream()
        broken = True
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                for reply in await stream.handle(message):
                    await context.write(reply)
                if stream.done:
                    break
            # A cancelled RPC also reads as EOF: only a real half-close ends cleanly.
            broken = context.cancelled()
        except StreamError as error:
            await context.abort(error.code, error.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("ext_proc stream failed")
            await context.abort(grpc.StatusCode.UNKNOWN, f"internal error: {exc}")
        finally:
            stream.close(broken=broken)
