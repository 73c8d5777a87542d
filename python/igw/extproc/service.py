"""The ``envoy.service.ext_proc.v3.ExternalProcessor`` servicer: a thin stream loop.

All request logic lives in ``Director`` / ``Stream``; this class only moves messages and maps
failures to gRPC at the edge: ``StreamError`` -> its status code, anything unexpected ->
``UNKNOWN`` (logged; Envoy then applies ``failure_mode_allow``). The ``finally`` closes the
stream's state whatever happened (end of stream, cancellation by Envoy or the client, error),
which releases the request's in-flight reservation. One broken stream never touches another:
each has its own ``Stream`` object and its exceptions end only its own RPC.

A stream whose first message carries ``observability_mode`` (Envoy's "send and go" filter)
is an observer (``observer.py``): it is read to the end and nothing is ever written on it, not
even for bad input or an internal error (those are logged and the rest of the stream dropped).
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
        message = await context.read()
        if message is grpc.aio.EOF:
            return
        if message.observability_mode:
            await self._observe(message, context)
            return
        stream = self.director.stream()
        broken = True
        try:
            while True:
                if not message.observability_mode:
                    for reply in await stream.handle(message):
                        await context.write(reply)
                    if stream.done:
                        break
                else:  # Envoy never mixes modes on one stream; this one expects no answer
                    log.warning("observability_mode message on a routing stream: dropped")
                message = await context.read()
                if message is grpc.aio.EOF:
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

    async def _observe(
        self, message: msgs.ProcessingRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Feed an observer until Envoy closes the stream; never write, never abort."""
        observer = self.director.observer()
        broken = True
        try:
            while True:
                try:
                    observer.handle(message)
                except Exception:
                    log.exception("observer stream: message dropped, the rest of it ignored")
                    observer.give_up()  # stop interpreting; keep reading silently
                if observer.finished_early:
                    break  # closing the stream tells Envoy no more messages are needed
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
            broken = context.cancelled()
        except asyncio.CancelledError:
            raise
        except Exception:  # a transport error: the stream is over, nobody to tell
            log.exception("observer stream failed")
        finally:
            observer.close(broken=broken)
