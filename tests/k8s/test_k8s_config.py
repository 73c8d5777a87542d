"""Finding the API server: in-cluster service account, kubeconfig contexts, precedence, TLS."""

from __future__ import annotations

import base64
import ssl
import time

import aiohttp
import pytest

from igw.extproc.tls import self_signed
from igw.k8s import ApiError, ClusterConfig, KubeClient, KubeConfigError
from igw.k8s import config as kube_config

from .fake_apiserver import POD, FakeApiServer, pod


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kubeconfig(path, cluster: str, user: str, *, context_ns: str = "") -> str:
    ns = f", namespace: {context_ns}" if context_ns else ""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters:\n- name: k\n  cluster: {cluster}\n"
        f"users:\n- name: u\n  user: {user}\n"
        f"contexts:\n- name: c\n  context: {{cluster: k, user: u{ns}}}\n"
    )
    return str(path)


@pytest.fixture
def service_account(tmp_path):
    directory = tmp_path / "sa"
    directory.mkdir()
    cert, _ = self_signed()
    (directory / "token").write_text("sa-token\n")
    (directory / "ca.crt").write_bytes(cert)
    (directory / "namespace").write_text("llm")
    return directory


def test_in_cluster_reads_the_service_account(service_account):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = kube_config.load(environ=env, service_account_dir=service_account)
    assert config.server == "https://10.96.0.1:443"
    assert config.namespace == "llm" and config.source == "in-cluster"
    assert config.auth_headers() == {"Authorization": "Bearer sa-token"}
    assert config.ssl is not None and config.ssl.verify_mode == ssl.CERT_REQUIRED


def test_in_cluster_ipv6_service_host_is_bracketed(service_account):
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    config = kube_config.in_cluster(env, service_account)
    assert config.server == "https://[fd00::1]:6443"


def test_a_rotated_token_file_is_re_read(service_account):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    config = kube_config.in_cluster(env, service_account)
    (service_account / "token").write_text("rotated")
    assert config.auth_headers()["Authorization"] == "Bearer sa-token"  # cached for a minute
    assert not config.token_refresh_due()
    config._token_read_at = time.monotonic() - kube_config.TOKEN_REREAD_SECONDS - 1
    assert config.token_refresh_due()
    config.refresh_token()
    assert config.auth_headers()["Authorization"] == "Bearer rotated"


def test_explicit_kubeconfig_beats_in_cluster(tmp_path, service_account):
    path = _kubeconfig(tmp_path / "kc", "{server: 'https://a.example:6443'}", "{token: t}")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    config = kube_config.load(path, environ=env, service_account_dir=service_account)
    assert config.server == "https://a.example:6443" and config.source == path


def test_kubeconfig_env_then_home_are_the_fallbacks(tmp_path):
    missing_sa = tmp_path / "no-sa"
    env_path = _kubeconfig(tmp_path / "env-kc", "{server: 'https://env:1'}", "{token: t}")
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    _kubeconfig(home / ".kube" / "config", "{server: 'https://home:1'}", "{token: t}")
    env = {"KUBECONFIG": f"{tmp_path / 'absent'}:{env_path}"}
    first = kube_config.load(environ=env, service_account_dir=missing_sa, home=home)
    assert first.server == "https://env:1"
    second = kube_config.load(environ={}, service_account_dir=missing_sa, home=home)
    assert second.server == "https://home:1"


def test_no_configuration_anywhere_is_an_error(tmp_path):
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube_config.load(environ={}, service_account_dir=tmp_path / "no", home=tmp_path)


def test_kubeconfig_token_file_is_resolved_next_to_the_file(tmp_path):
    (tmp_path / "tok").write_text("from-file\n")
    path = _kubeconfig(
        tmp_path / "kc", "{server: 'https://x:1'}", "{tokenFile: tok}", context_ns="team"
    )
    config = kube_config.from_kubeconfig(path)
    assert config.auth_headers() == {"Authorization": "Bearer from-file"}
    assert config.namespace == "team"


def test_kubeconfig_client_certificate_data_is_loaded(tmp_path):
    cert, key = self_signed("client")
    user = f"{{client-certificate-data: {_b64(cert)}, client-key-data: {_b64(key)}}}"
    config = kube_config.from_kubeconfig(
        _kubeconfig(tmp_path / "kc", "{server: 'https://x:1'}", user)
    )
    assert config.ssl is not None and config.token is None


def test_mismatched_client_certificate_and_key_are_rejected(tmp_path):
    cert, _ = self_signed("client")
    _, other_key = self_signed("other")
    user = f"{{client-certificate-data: {_b64(cert)}, client-key-data: {_b64(other_key)}}}"
    path = _kubeconfig(tmp_path / "kc", "{server: 'https://x:1'}", user)
    with pytest.raises(KubeConfigError, match="matching PEM pair"):
        kube_config.from_kubeconfig(path)


def test_a_client_certificate_without_its_key_is_rejected(tmp_path):
    cert, _ = self_signed("client")
    path = _kubeconfig(
        tmp_path / "kc", "{server: 'https://x:1'}", f"{{client-certificate-data: {_b64(cert)}}}"
    )
    with pytest.raises(KubeConfigError, match="together"):
        kube_config.from_kubeconfig(path)


def test_insecure_skip_tls_verify_disables_verification(tmp_path):
    path = _kubeconfig(
        tmp_path / "kc", "{server: 'https://x:1', insecure-skip-tls-verify: true}", "{token: t}"
    )
    config = kube_config.from_kubeconfig(path)
    assert config.ssl is not None and config.ssl.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ("{server: 'x:1'}", "{token: t}", r"clusters\[k\]\.cluster\.server"),
        ("{server: 'https://x:1'}", "{auth-provider: {name: gcp}}", "auth-provider"),
        ("{server: 'https://x:1'}", "{tokenFile: /nonexistent/tok}", "tokenFile"),
        (
            "{server: 'https://x:1', certificate-authority-data: bm90IGEgY2VydA==}",
            "{token: t}",
            "certificate-authority",
        ),
    ],
)
def test_bad_kubeconfig_fields_are_named(tmp_path, cluster, user, message):
    path = _kubeconfig(tmp_path / "kc", cluster, user)
    with pytest.raises(KubeConfigError, match=message):
        kube_config.from_kubeconfig(path)


def test_missing_context_entry_is_named(tmp_path):
    path = tmp_path / "kc"
    path.write_text("current-context: nope\ncontexts: []\nclusters: []\nusers: []\n")
    with pytest.raises(KubeConfigError, match="contexts: no entry named 'nope'"):
        kube_config.from_kubeconfig(str(path))


async def test_the_kubeconfig_ca_verifies_a_tls_api_server(tmp_path):
    cert, key = self_signed("apiserver")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    api = await FakeApiServer().start(ssl_context=server_ssl)
    try:
        api.apply(POD, pod("pod-0", "10.0.0.1", {"app": "x"}))
        cluster = f"{{server: '{api.url}', certificate-authority-data: {_b64(cert)}}}"
        path = _kubeconfig(tmp_path / "kc", cluster, f"{{token: {api.token}}}")
        async with KubeClient(kube_config.from_kubeconfig(path)) as client:
            items, _ = await client.list(kube_config_pods(), "default")
        assert [i["metadata"]["name"] for i in items] == ["pod-0"]
        # without that CA the same server is refused
        async with KubeClient(ClusterConfig(server=api.url, ssl=ssl.create_default_context(),
                                            token=api.token)) as client:  # fmt: skip
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await client.list(kube_config_pods(), "default")
    finally:
        await api.stop()


def kube_config_pods():
    from igw.k8s.discovery import PODS

    return PODS


async def test_a_wrong_token_is_an_api_error_with_the_status(api):
    async with KubeClient(ClusterConfig(server=api.url, token="wrong")) as client:
        with pytest.raises(ApiError) as info:
            await client.list(kube_config_pods(), "default")
    assert info.value.status == 401


async def test_a_server_url_with_a_path_prefix_is_kept(tmp_path):
    api = await FakeApiServer().start(prefix="/k8s/clusters/c-1")
    try:
        api.apply(POD, pod("pod-0", "10.0.0.1", {"app": "x"}))
        config = kube_config.from_kubeconfig(api.kubeconfig(tmp_path / "kc"))
        assert config.server.endswith("/k8s/clusters/c-1")
        async with KubeClient(config) as client:
            items, _ = await client.list(kube_config_pods(), "default")
        assert [i["metadata"]["name"] for i in items] == ["pod-0"]
        assert api.requests[-1][0] == "/k8s/clusters/c-1/api/v1/namespaces/default/pods"
    finally:
        await api.stop()
