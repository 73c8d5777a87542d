"""``igw bbr``: the body-based-routing ext_proc service (model in body -> header).

Flags follow the reference body-based router: ``--grpc-port`` 9004, ``--grpc-health-port``
9005, ``--secure-serving`` (default true, self-signed certificate unless ``--cert-path``).
Health answers SERVING for every service name once the server is up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from igw import busypoll
from igw.extproc.bbr import BbrProcessor, BbrServicer
from igw.extproc.flags import GRPC_TRANSPORTS, add_bool, names, parse_duration, parse_size
from igw.extproc.health import HealthServicer
from igw.extproc.server import grpc_options

log = logging.getLogger("igw.bbr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(*names("grpc-port"), type=int, default=9004, help="ext_proc gRPC port")
    parser.add_argument(*names("grpc-health-port"), type=int, default=9005, help="health port")
    add_bool(parser, "secure-serving", True, "serve over TLS (self-signed if no cert)")
    parser.add_argument(*names("cert-path"), default="", help="directory with tls.crt, tls.key")
    add_bool(parser, "streaming", True, "accepted for compatibility (igw always streams)")
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument(
        "--max-request-body",
        type=parse_size,
        default=parse_size("64Mi"),
        metavar="SIZE",
        help="bodies larger than this pass through without a model header (default 64Mi)",
    )
    parser.add_argument(
        *names("drain-timeout"), type=parse_duration, default=5.0, metavar="DURATION"
    )
    parser.add_argument(
        "--grpc-transport",
        choices=GRPC_TRANSPORTS,
        default="grpcio",
        help="what serves the ext_proc port: grpcio (grpc.aio, the default) or igw's own HTTP/2 "
        "transport (less CPU per message; see docs/deploy-epp.md). Default: grpcio",
    )
    busypoll.add_flag(parser, ". Applies to --grpc-transport=igw. Default: 0 (off)")
    parser.add_argument("--v", "-v", type=int, default=0, metavar="LEVEL", help="ignored")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError, RuntimeError) as error:
        print(f"igw bbr: {error}", file=sys.stderr)
        return 2


async def _main(args: argparse.Namespace) -> int:
    from igw.extproc.h2_transport import H2GrpcServer
    from igw.extproc.tls import certificate_pair, grpc_credentials, ssl_server_context

    bad_window = busypoll.window_error("--busy-poll-us", args.busy_poll_us)
    if bad_window is not None:
        raise ValueError(bad_window)
    if args.busy_poll_us and args.grpc_transport != "igw":
        log.warning(
            "--busy-poll-us has no effect on grpc.aio, which reads on its own threads: "
            "it needs --grpc-transport=igw"
        )
    pair = certificate_pair(args.cert_path or None) if args.secure_serving else None
    health_servicer = HealthServicer(lambda: True)
    server: grpc.aio.Server | H2GrpcServer
    if args.grpc_transport == "igw":
        server = H2GrpcServer(
            BbrProcessor(args.max_request_body),
            health_servicer,
            host=args.bind_address,
            port=args.grpc_port,
            ssl_context=ssl_server_context(*pair) if pair else None,
            read_batch=0.0,
            on_read=busypoll.poke_of(busypoll.make_poller(args.busy_poll_us)),
        )
    else:
        server = grpc.aio.server(options=grpc_options())
        servicer = BbrServicer(args.max_request_body)
        pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
        target = f"{args.bind_address}:{args.grpc_port}"
        if pair:
            port = server.add_secure_port(target, grpc_credentials(*pair))
        else:
            port = server.add_insecure_port(target)
    health = grpc.aio.server(options=grpc_options())
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health)
    health_port = health.add_insecure_port(f"{args.bind_address}:{args.grpc_health_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    if isinstance(server, H2GrpcServer):
        assert server.port is not None
        port = server.port
    await health.start()
    scheme = "TLS" if args.secure_serving else "plaintext"
    print(f"igw bbr: ext_proc on {args.bind_address}:{port} ({scheme}, {args.grpc_transport}), "
          f"health on :{health_port}", flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        await server.stop(args.drain_timeout)
        await health.stop(0)
    return 0
