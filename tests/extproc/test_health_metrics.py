"""gRPC health (REFERENCE 6), the /metrics endpoint, and TLS serving."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from epp_harness import destination, make_pool, req_llm, resp_body, resp_headers, running_epp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igw.extproc.tls import server_credentials

pytestmark = pytest.mark.usefixtures("epp_transport")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"


async def _check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return reply.status


async def test_all_service_names_serving_when_pool_synced():
    async with running_epp(make_pool([(0, 0.1)])) as epp:
        for service in ("liveness", "readiness", "", EXT_PROC):
            assert await _check(epp.server.health_port, service) == SERVING


async def test_readiness_not_serving_until_pool_synced_but_liveness_serving():
    pool = make_pool([(0, 0.1)])
    pool.synced = False
    async with running_epp(pool) as epp:
        assert await _check(epp.server.health_port, "readiness") == NOT_SERVING
        assert await _check(epp.server.health_port, EXT_PROC) == NOT_SERVING
        assert await _check(epp.server.health_port, "liveness") == SERVING
        pool.synced = True
        assert await _check(epp.server.health_port, "readiness") == SERVING


async def test_draining_turns_readiness_off():
    async with running_epp(make_pool([(0, 0.1)])) as epp:
        epp.server.readiness.draining = True
        assert await _check(epp.server.health_port, "readiness") == NOT_SERVING


async def test_watch_streams_the_current_status():
    async with running_epp(make_pool([(0, 0.1)])) as epp:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.server.health_port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="readiness")
            )
            first = await call.read()
            assert first.status == SERVING
            call.cancel()


async def test_metrics_endpoint_exposes_reference_names_after_requests():
    async with running_epp(make_pool([(0, 0.1), (2, 0.5)])) as epp:
        await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model-v2"),
                resp_headers({":status": "200", "content-type": "application/json"}),
                resp_body(
                    b'{"model":"my-model-v2","usage":{"prompt_tokens":5,"completion_tokens":3}}',
                    eos=True,
                ),
            ]
        )
        url = f"http://127.0.0.1:{epp.server.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
        for needle in (
            'inference_objective_request_total{model_name="my-model",priority="2",'
            'target_model_name="my-model-v2"} 1.0',
            'inference_objective_request_duration_seconds_bucket{le="0.005",'
            'model_name="my-model",target_model_name="my-model-v2"}',
            'inference_objective_output_tokens_sum{model_name="my-model",'
            'target_model_name="my-model-v2"} 3.0',
            'inference_objective_running_requests{model_name="my-model"} 0.0',
            'inference_pool_ready_pods{name="vllm-qwen3-32b-pool"} 2.0',
            'inference_pool_average_queue_size{name="vllm-qwen3-32b-pool"} 1.0',
            'inference_pool_average_kv_cache_utilization{name="vllm-qwen3-32b-pool"} 0.3',
            "inference_extension_scheduler_e2e_duration_seconds_count 1.0",
            'inference_extension_scheduler_attempts_total{namespace="default",pod_name="pod-0",'
            'port="8000",status="success",target_model_name="my-model-v2"} 1.0',
            "llm_d_epp_request_total{",
            'llm_d_epp_ready_endpoints{name="vllm-qwen3-32b-pool"} 2.0',
            'llm_d_epp_request_output_tokens_sum{fairness_id="default-flow",model_name="my-model",'
            'priority="2",target_model_name="my-model-v2"} 3.0',
            "llm_d_epp_request_size_bytes_count{",
        ):
            assert needle in text, needle


async def test_ext_proc_over_tls_with_the_self_signed_certificate():
    credentials, cert_pem = server_credentials(None)
    from igw.extproc.server import EppServer

    async with running_epp(make_pool([(0, 0.1)])) as epp:
        server = EppServer(
            epp.director,
            host="127.0.0.1",
            grpc_port=0,
            health_port=0,
            metrics_port=None,
            credentials=credentials,
        )
        await server.start()
        try:
            channel_credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{server.grpc_port}",
                channel_credentials,
                options=[("grpc.ssl_target_name_override", "localhost")],
            ) as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)

                async def gen():
                    for message in req_llm("p", "my-model", "my-model"):
                        yield message

                replies = [r async for r in stub.Process(gen())]
            assert destination(replies[0]) == "192.168.1.1:8000"
        finally:
            await server.stop(0)


async def test_health_is_also_answered_on_the_ext_proc_port():
    async with running_epp(make_pool([(0, 0.1)])) as epp:
        assert await _check(epp.server.grpc_port, EXT_PROC) == SERVING
