"""Where the Kubernetes API server is and how to authenticate to it.

Two sources, chosen as ``kubectl`` and client-go choose them:

* an explicit kubeconfig file (``--kubeconfig``), else
* in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account's token, CA and
  namespace under ``/var/run/secrets/kubernetes.io/serviceaccount``, else
* ``$KUBECONFIG`` (its first existing path) or ``~/.kube/config``.

From a kubeconfig the current context's cluster (``server``, ``certificate-authority[-data]``,
``insecure-skip-tls-verify``) and user (``token``, ``tokenFile``,
``client-certificate[-data]`` + ``client-key[-data]``, ``username``/``password``) are used.
``exec`` and ``auth-provider`` credential plugins are not supported: they run arbitrary
programs, and in a cluster the service account is the way; the error says so.

Service-account tokens are projected and rotated by the kubelet, so a token file is re-read
(at most once a minute) rather than read once. Every problem raises ``KubeConfigError`` naming
the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0


class KubeConfigError(ValueError):
    """The Kubernetes client configuration is missing or invalid (message names the field)."""


@dataclasses.dataclass
class ClusterConfig:
    """Everything the client needs to reach one API server as one identity."""

    server: str  # "https://host:port" (or http:// for a local test server)
    ssl: ssl.SSLContext | None = None  # None: plain HTTP
    token: str | None = None
    token_file: str | None = None
    basic_auth: tuple[str, str] | None = None
    namespace: str = "default"  # the context's (or the service account's) namespace
    source: str = ""  # "in-cluster" or the kubeconfig path, for messages
    _token_read_at: float = dataclasses.field(default=0.0, repr=False)

    def token_refresh_due(self) -> bool:
        """True when a token file's copy is older than a minute (kubelet rotates them)."""
        return bool(self.token_file) and (
            time.monotonic() - self._token_read_at > TOKEN_REREAD_SECONDS
        )

    def refresh_token(self) -> None:
        """Re-read the token file (blocking file I/O: callers on the event loop use a thread).
        A read failure keeps the previous token; the API server says if it expired."""
        if self.token_file:
            try:
                self.token = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError:
                pass
            self._token_read_at = time.monotonic()

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for the current credentials."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.basic_auth:
            raw = f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}


def load(
    kubeconfig: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    home: Path | None = None,
) -> ClusterConfig:
    """The configuration to use, by the precedence in the module docstring."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    if env.get("KUBERNETES_SERVICE_HOST") and (service_account_dir / "token").exists():
        return in_cluster(env, service_account_dir)
    for path in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if path and Path(path).exists():
            return from_kubeconfig(path)
    default = (home or Path.home()) / ".kube" / "config"
    if default.exists():
        return from_kubeconfig(default)
    raise KubeConfigError(
        "no Kubernetes API configuration found: not running in a cluster "
        "(KUBERNETES_SERVICE_HOST is unset or there is no service account token), and no "
        "--kubeconfig, $KUBECONFIG or ~/.kube/config"
    )


def in_cluster(env: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST is not set")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 service address
    token_path = directory / "token"
    try:
        token = token_path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KubeConfigError(f"in-cluster: cannot read {token_path}: {exc.strerror}") from None
    context = ssl.create_default_context()
    ca = directory / "ca.crt"
    if ca.exists():
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise KubeConfigError(f"in-cluster: {ca}: not a PEM CA bundle ({exc})") from None
    namespace = "default"
    ns_file = directory / "namespace"
    if ns_file.exists():
        namespace = ns_file.read_text(encoding="utf-8").strip() or "default"
    config = ClusterConfig(
        server=f"https://{host}:{port}",
        ssl=context,
        token=token,
        token_file=str(token_path),
        namespace=namespace,
        source="in-cluster",
    )
    config._token_read_at = time.monotonic()
    return config


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeConfigError(f"{where}: expected a mapping")
    return value


def _named(doc: dict[str, Any], section: str, name: str, source: str) -> dict[str, Any]:
    """The ``section[].{name, <kind>}`` entry called ``name`` (clusters, users, contexts)."""
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise KubeConfigError(f"{source}: {section}: expected a list")
    key = section[:-1]  # clusters -> cluster
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("name") == name:
            return _mapping(entry.get(key) or {}, f"{source}: {section}[{i}].{key}")
    raise KubeConfigError(f"{source}: {section}: no entry named {name!r}")


def _resolve(path: str, base: Path) -> str:
    candidate = Path(os.path.expanduser(path))
    return str(candidate if candidate.is_absolute() else base / candidate)


def _decode(data: Any, where: str) -> bytes:
    if not isinstance(data, str):
        raise KubeConfigError(f"{where}: expected base64 text")
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"{where}: not valid base64") from None


def _pem(user: dict, cluster_base: Path, key: str, where: str) -> bytes | None:
    """The bytes of ``<key>-data`` or of the file named by ``<key>``."""
    if user.get(f"{key}-data"):
        return _decode(user[f"{key}-data"], f"{where}.{key}-data")
    if user.get(key):
        path = _resolve(str(user[key]), cluster_base)
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise KubeConfigError(f"{where}.{key}: cannot read {path}: {exc.strerror}") from None
    return None


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes, where: str) -> None:
    """``load_cert_chain`` wants files: write both to a private temp dir, load, delete."""
    with tempfile.TemporaryDirectory(prefix="igw-kube-") as tmp:
        cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        try:
            context.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise KubeConfigError(
                f"{where}: client-certificate / client-key are not a matching PEM pair ({exc})"
            ) from None


def from_kubeconfig(path: str | os.PathLike[str], context_name: str | None = None) -> ClusterConfig:
    """The current (or named) context of a kubeconfig file."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise KubeConfigError(f"{source}: cannot read kubeconfig: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{source}: not valid YAML: {exc}") from None
    doc = _mapping(doc, f"{source}")
    base = Path(source).resolve().parent
    name = context_name or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{source}: current-context: not set; expected a context name")
    context = _named(doc, "contexts", str(name), source)
    where_ctx = f"{source}: contexts[{name}]"
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if not cluster_name:
        raise KubeConfigError(f"{where_ctx}.context.cluster: expected a cluster name")
    cluster = _named(doc, "clusters", str(cluster_name), source)
    user = _named(doc, "users", str(user_name), source) if user_name else {}
    where_cluster = f"{source}: clusters[{cluster_name}].cluster"
    where_user = f"{source}: users[{user_name}].user"

    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{where_cluster}.server: expected an https:// URL, got {server!r}")
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeConfigError(
                f"{where_user}.{plugin}: credential plugins are not supported by igw; use a "
                "token, tokenFile or client certificate (in a cluster: the service account)"
            )

    context_ssl: ssl.SSLContext | None = None
    if server.startswith("https://"):
        context_ssl = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl.check_hostname = False
            context_ssl.verify_mode = ssl.CERT_NONE
        else:
            ca = _pem(cluster, base, "certificate-authority", where_cluster)
            if ca is not None:
                try:
                    context_ssl.load_verify_locations(cadata=ca.decode("ascii", "replace"))
                except ssl.SSLError as exc:
                    raise KubeConfigError(
                        f"{where_cluster}.certificate-authority: not a PEM certificate ({exc})"
                    ) from None
        cert = _pem(user, base, "client-certificate", where_user)
        key = _pem(user, base, "client-key", where_user)
        if (cert is None) != (key is None):
            raise KubeConfigError(
                f"{where_user}: client-certificate and client-key must be given together"
            )
        if cert is not None and key is not None:
            _load_client_cert(context_ssl, cert, key, where_user)

    token = user.get("token")
    token_file = user.get("tokenFile")
    if token_file:
        token_file = _resolve(str(token_file), base)
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KubeConfigError(
                f"{where_user}.tokenFile: cannot read {token_file}: {exc.strerror}"
            ) from None
    basic = None
    if user.get("username") and user.get("password"):
        basic = (str(user["username"]), str(user["password"]))
    config = ClusterConfig(
        server=server,
        ssl=context_ssl,
        token=str(token) if token else None,
        token_file=token_file or None,
        basic_auth=basic,
        namespace=str(context.get("namespace") or "default"),
        source=source,
    )
    config._token_read_at = time.monotonic()
    return config
