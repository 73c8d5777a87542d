"""Page fetchers against raw HTTP servers: framing, keep-alive, encodings, failures."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Callable

import aiohttp
import pytest
import yarl

from igw.datalayer.transport import (
    CONNECT,
    HAVE_HTTPTOOLS,
    TIMEOUT,
    TOO_BIG,
    TRANSPORT,
    AiohttpFetch,
    FetchError,
    LeanFetch,
)

Responder = Callable[[int], bytes | None]  # request number -> raw response (None: close)


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def raw_server():
    """Start a server whose answers a test scripts; yields a factory returning the URL."""
    servers = []

    async def start(
        respond: Responder, *, close_after: bool = False, delay=None, tls=None
    ) -> yarl.URL:
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            try:
                while True:
                    try:
                        await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    count += 1
                    if delay is not None and delay(count):
                        await asyncio.sleep(delay(count))
                    answer = respond(count)
                    if answer is None:
                        return
                    writer.write(answer)
                    await writer.drain()
                    if close_after:
                        return
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        scheme = "https" if tls else "http"
        return yarl.URL(f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics")

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


KINDS = [
    "aiohttp",
    pytest.param("lean", marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="no httptools")),
]


@pytest.fixture(params=KINDS)
async def fetcher(request):
    """Factory of fetchers of one kind for a URL; sessions closed afterwards."""
    session = aiohttp.ClientSession()
    made = []

    def make(url: yarl.URL, max_bytes: int = 1 << 20):
        headers = {"Accept-Encoding": "identity"}
        if request.param == "lean":
            fetch = LeanFetch(url, headers=headers, max_bytes=max_bytes)
        else:
            fetch = AiohttpFetch(session, url, headers=headers, max_bytes=max_bytes)
        made.append(fetch)
        return fetch

    yield make
    for fetch in made:
        fetch.close()
    await session.close()


async def test_content_length_body_over_a_reused_connection(raw_server, fetcher):
    url = await raw_server(lambda n: ok(f"page {n}".encode()))
    fetch = fetcher(url)
    assert await fetch.get(1.0) == (200, b"page 1")
    assert await fetch.get(1.0) == (200, b"page 2")


async def test_chunked_body(raw_server, fetcher):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    fetch = fetcher(await raw_server(lambda n: chunked))
    assert await fetch.get(1.0) == (200, b"hello world")
    assert await fetch.get(1.0) == (200, b"hello world")


async def test_close_delimited_body(raw_server, fetcher):
    url = await raw_server(lambda n: b"HTTP/1.0 200 OK\r\n\r\nuntil the end", close_after=True)
    fetch = fetcher(url)
    assert await fetch.get(1.0) == (200, b"until the end")
    assert await fetch.get(1.0) == (200, b"until the end")


async def test_server_closing_after_each_answer_is_fine(raw_server, fetcher):
    url = await raw_server(lambda n: ok(b"x", "Connection: close"), close_after=True)
    fetch = fetcher(url)
    for _ in range(3):
        assert await fetch.get(1.0) == (200, b"x")


async def test_idle_connection_closed_by_server_is_reopened(raw_server, fetcher):
    # Keep-alive announced, but the server drops the connection right after answering.
    url = await raw_server(lambda n: ok(f"{n}".encode()), close_after=True)
    fetch = fetcher(url)
    assert await fetch.get(1.0) == (200, b"1")
    await asyncio.sleep(0.02)
    assert await fetch.get(1.0) == (200, b"2")


async def test_gzip_body_is_decoded(raw_server, fetcher):
    body = gzip.compress(b"vllm:num_requests_waiting 3\n")
    fetch = fetcher(await raw_server(lambda n: ok(body, "Content-Encoding: gzip")))
    assert await fetch.get(1.0) == (200, b"vllm:num_requests_waiting 3\n")


async def test_status_and_body_of_an_error_page(raw_server, fetcher):
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    fetch = fetcher(await raw_server(lambda n: answer))
    assert await fetch.get(1.0) == (404, b"not found")


async def test_garbage_answer_is_a_transport_error(raw_server, fetcher):
    fetch = fetcher(await raw_server(lambda n: b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(FetchError) as info:
        await fetch.get(1.0)
    assert info.value.kind == TRANSPORT and str(fetch.url) in str(info.value)


async def test_refused_connection_is_a_connect_error(fetcher):
    fetch = fetcher(yarl.URL("http://127.0.0.1:9/metrics"))
    with pytest.raises(FetchError) as info:
        await fetch.get(1.0)
    assert info.value.kind == CONNECT


async def test_oversized_page_is_too_big(raw_server, fetcher):
    fetch = fetcher(await raw_server(lambda n: ok(b"x" * 5000)), max_bytes=1000)
    with pytest.raises(FetchError) as info:
        await fetch.get(1.0)
    assert info.value.kind == TOO_BIG


async def test_timeout_then_the_next_answer_is_not_the_late_one(raw_server, fetcher):
    url = await raw_server(lambda n: ok(f"answer {n}".encode()), delay=lambda n: 0.3 * (n == 1))
    fetch = fetcher(url)
    with pytest.raises(FetchError) as info:
        await fetch.get(0.1)
    assert info.value.kind == TIMEOUT
    status, body = await fetch.get(1.0)
    assert (status, body) == (200, b"answer 2")


def _self_signed_context(tmp_path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate (as pods often have)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_https_with_a_self_signed_certificate(raw_server, fetcher, tmp_path):
    url = await raw_server(lambda n: ok(b"secure"), tls=_self_signed_context(tmp_path))
    fetch = fetcher(url)
    assert await fetch.get(2.0) == (200, b"secure")
    assert await fetch.get(2.0) == (200, b"secure")
