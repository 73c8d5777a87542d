"""deploy/: CRDs are structural, every manifest matches its schema, and the pieces fit together
(pools -> picker Services -> igw epp Deployments -> RBAC; routes -> pools; examples 14a/14b)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from igw.config import load_config
from igw.extproc import bbr_command
from igw.extproc import command as epp_command
from igw.k8s import parse_pool
from igw.k8s.discovery import ALL_RESOURCES
from igw.k8s.pool import LEGACY_GROUP
from igw.objectives import parse_objectives
from igw.scheduling import SchedulingEngine
from igw.sim import command as sim_command

from .schema import structural_problems, validate

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD_FILES = sorted((DEPLOY / "crds").glob("*.yaml"))
MANIFEST_FILES = sorted((DEPLOY / "kubernetes").glob("*.yaml")) + sorted(
    (DEPLOY / "examples").glob("*.yaml")
)
# kinds that have no CRD here: (apiVersion, kind) checked for spelling only
KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"),
}
POOL_REF = {"group": "inference.networking.k8s.io", "kind": "InferencePool"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version."""
    out = {}
    for path in CRD_FILES:
        for crd in _docs(path):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


def _all() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFEST_FILES for doc in _docs(path)]


def _of(kind: str, docs=None) -> list[dict[str, Any]]:
    return [d for _, d in (docs or _all()) if d["kind"] == kind]


def _ns(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("namespace", "default")


def _find(kind: str, namespace: str, name: str, docs=None) -> dict[str, Any] | None:
    for obj in _of(kind, docs):
        if _ns(obj) == namespace and obj["metadata"]["name"] == name:
            return obj
    return None


def _container_args(deployment: dict[str, Any]) -> list[str]:
    """The first container's args with $(VAR) from metadata.namespace fieldRefs expanded."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[item["name"]] = _ns(deployment) if ref == "metadata.namespace" else item.get("value")
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def _parse(module: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _epp_deployments(docs=None) -> list[tuple[dict[str, Any], argparse.Namespace]]:
    out = []
    for deployment in _of("Deployment", docs):
        args = _container_args(deployment)
        if args and args[0] == "epp":
            out.append((deployment, _parse(epp_command, args[1:])))
    return out


# ------------------------------------------------------------------------------- CRDs


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_structural_with_one_storage_version(path):
    (crd,) = _docs(path)
    spec = crd["spec"]
    assert (crd["apiVersion"], crd["kind"]) == (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
    )
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced"
    assert sum(1 for v in spec["versions"] if v["storage"]) == 1
    for version in spec["versions"]:
        assert structural_problems(version["schema"]["openAPIV3Schema"]) == []


def test_the_crds_cover_every_current_resource_igw_watches():
    served = {
        (
            f"{crd['spec']['group']}/{v['name']}",
            crd["spec"]["names"]["plural"],
            crd["spec"]["names"]["kind"],
        )
        for path in CRD_FILES
        for crd in _docs(path)
        for v in crd["spec"]["versions"]
        if v["served"]
    }
    wanted = {
        (r.api_version, r.plural, r.kind)
        for r in ALL_RESOURCES
        if r.group not in ("", LEGACY_GROUP)
    }
    assert wanted and wanted <= served


def test_the_schema_checker_catches_bad_objects():
    schemas = _crds()
    pool = schemas[("inference.networking.k8s.io/v1", "InferencePool")]
    bad_pool = {
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "targetPorts": [{"number": p} for p in range(8000, 8009)],
            "endpointPickerRef": {"name": "epp", "failureMode": "Sometimes"},
            "extra": 1,
        }
    }
    errors = validate(bad_pool, pool)
    assert any("targetPorts: expected at most 8" in e for e in errors)
    assert any("failureMode" in e for e in errors) and any("spec.extra" in e for e in errors)
    objective = schemas[("llm-d.ai/v1alpha2", "InferenceObjective")]
    assert validate({"spec": {"priority": "high", "poolRef": {}}}, objective) == [
        "spec.priority: expected an integer, got str",
        "spec.poolRef.name: required",
    ]


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_every_manifest_has_a_known_kind_and_matches_its_crd(path):
    schemas = _crds()
    docs = _docs(path)
    assert docs
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert doc["metadata"]["name"], key
        if key in schemas:
            assert validate(doc, schemas[key]) == [], (path.name, doc["metadata"]["name"])
        else:
            assert key in KNOWN_KINDS, f"{path.name}: unexpected {key}"


def test_igw_accepts_every_pool_and_objective_in_the_manifests():
    for pool in _of("InferencePool"):
        spec = parse_pool(pool)
        assert spec.ports and spec.selector
    for path in MANIFEST_FILES:
        text = path.read_text()
        for pool in _of("InferencePool", [(path, d) for d in _docs(path)]):
            found = parse_objectives(
                text, str(path), pool_name=pool["metadata"]["name"], pool_namespace=_ns(pool)
            )
            assert found is not None  # raises ConfigError on any invalid objective/rewrite


def test_every_pool_has_a_picker_service_deployment_and_pods():
    pools = _of("InferencePool")
    assert len(pools) >= 5
    epps = _epp_deployments()
    for pool in pools:
        ns, name = _ns(pool), pool["metadata"]["name"]
        ref = pool["spec"]["endpointPickerRef"]
        service = _find("Service", ns, ref["name"])
        assert service is not None, f"{ns}/{name}: no Service {ref['name']}"
        assert ref["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
        pickers = [
            (d, a)
            for d, a in epp_deployments_in(epps, ns)
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pickers) == 1, f"{ns}/{name}: Service {ref['name']} selects {len(pickers)}"
        _, args = pickers[0]
        assert (args.pool_name, args.pool_namespace or "default") == (name, ns)
        selector = pool["spec"]["selector"]["matchLabels"]
        servers = [
            d
            for d in _of("Deployment")
            if _ns(d) == ns
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        if pool["metadata"]["name"] == "llm-pool":
            continue  # deploy/kubernetes: the model servers are the user's
        assert servers, f"{ns}/{name}: no Deployment has pods its selector matches"
        for server in servers:
            ports = {
                p["containerPort"]
                for p in server["spec"]["template"]["spec"]["containers"][0]["ports"]
            }
            assert {p["number"] for p in pool["spec"]["targetPorts"]} <= ports


def epp_deployments_in(epps, namespace):
    return [(d, a) for d, a in epps if _ns(d) == namespace]


def _role_grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_picker_has_reference_ports_probes_and_rbac_for_what_igw_watches():
    epps = _epp_deployments()
    assert len(epps) >= 5
    needed = {(r.group, r.plural, v) for r in ALL_RESOURCES for v in ("get", "list", "watch")}
    for deployment, args in epps:
        ns = _ns(deployment)
        assert (args.grpc_port, args.grpc_health_port, args.metrics_port) == (9002, 9003, 9090)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert {p["containerPort"] for p in container["ports"]} == {9002, 9003, 9090}
        assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
        assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
        account = pod["serviceAccountName"]
        assert _find("ServiceAccount", ns, account) is not None
        bindings = [
            b
            for b in _of("RoleBinding")
            if _ns(b) == ns
            and {"kind": "ServiceAccount", "name": account, "namespace": ns} in b["subjects"]
        ]
        assert bindings, f"{ns}: no RoleBinding for {account}"
        role = _find("Role", ns, bindings[0]["roleRef"]["name"])
        assert role is not None and needed <= _role_grants(role)
        if args.config_file:
            volume = pod["volumes"][0]["configMap"]["name"]
            config_map = _find("ConfigMap", ns, volume)
            assert config_map is not None
            key = Path(args.config_file).name
            SchedulingEngine(load_config(text=config_map["data"][key]))


def test_routes_send_only_to_pools_that_exist_and_may_be_referenced():
    routes = _of("HTTPRoute")
    assert routes
    for route in routes:
        ns = _ns(route)
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert {k: ref[k] for k in ("group", "kind")} == POOL_REF
                target_ns = ref.get("namespace", ns)
                assert _find("InferencePool", target_ns, ref["name"]) is not None, ref
                if target_ns != ns:
                    grants = [
                        g
                        for g in _of("ReferenceGrant")
                        if _ns(g) == target_ns
                        and {
                            "group": "gateway.networking.k8s.io",
                            "kind": "HTTPRoute",
                            "namespace": ns,
                        }
                        in g["spec"]["from"]
                        and any(
                            t.get("name") in (None, ref["name"]) and t["kind"] == "InferencePool"
                            for t in g["spec"]["to"]
                        )
                    ]
                    assert grants, f"no ReferenceGrant lets {ns} route to {target_ns}/{ref['name']}"


# ----------------------------------------------------------------------------- examples


def _example(name: str) -> list[tuple[Path, dict[str, Any]]]:
    path = DEPLOY / "examples" / name
    return [(path, d) for d in _docs(path)]


def _rule_for(route: dict[str, Any], model: str) -> dict[str, Any]:
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            for header in match.get("headers", []):
                if header["name"].lower() == "x-gateway-model-name" and header["value"] == model:
                    return rule
    raise AssertionError(f"no rule for model {model}")


def _objective_header(rule: dict[str, Any]) -> str:
    for item in rule.get("filters", []):
        for header in item.get("requestHeaderModifier", {}).get("set", []):
            if header["name"] in ("x-llm-d-inference-objective", "x-gateway-inference-objective"):
                return header["value"]
    raise AssertionError("rule sets no objective header")


def _served_models(docs, pool: dict[str, Any]) -> set[str]:
    """Model and adapter names the simulator pods selected by ``pool`` serve."""
    selector = pool["spec"]["selector"]["matchLabels"]
    models: set[str] = set()
    for deployment in _of("Deployment", docs):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if _ns(deployment) == _ns(pool) and selector.items() <= labels.items():
            args = _container_args(deployment)
            assert args[0] == "sim"
            parsed = _parse(sim_command, args[1:])
            models |= set(parsed.model) | set(parsed.lora)
    return models


def _priority(docs, namespace: str, name: str) -> int | None:
    objective = _find("InferenceObjective", namespace, name, docs)
    assert objective is not None, f"no objective {namespace}/{name}"
    return objective["spec"].get("priority", 0)


def test_example_14a_splits_the_chatbot_90_10_across_two_pools_with_priority_10():
    docs = _example("two-models-canary.yaml")
    (route,) = _of("HTTPRoute", docs)
    chatbot = _rule_for(route, "chatbot")
    weights = {
        (r.get("namespace", _ns(route)), r["name"]): r["weight"] for r in chatbot["backendRefs"]
    }
    assert sorted(weights.values()) == [10, 90]
    objective = _objective_header(chatbot)
    for (ns, pool_name), _weight in weights.items():
        pool = _find("InferencePool", ns, pool_name, docs)
        assert pool is not None
        assert "chatbot" in _served_models(docs, pool)
        assert _priority(docs, ns, objective) == 10
        found = _find("InferenceObjective", ns, objective, docs)
        assert found["spec"]["poolRef"]["name"] == pool_name
    recommender = _rule_for(route, "recommender")
    (ref,) = recommender["backendRefs"]
    pool = _find("InferencePool", _ns(route), ref["name"], docs)
    assert pool is not None and "recommender" in _served_models(docs, pool)
    assert _priority(docs, _ns(route), _objective_header(recommender)) == 0
    bbr = [d for d in _of("Deployment", docs) if _container_args(d)[0] == "bbr"]
    assert len(bbr) == 1
    _parse(bbr_command, _container_args(bbr[0])[1:])


def test_example_14b_serves_per_language_adapters_on_one_base_model():
    docs = _example("lora-adapters.yaml")
    (pool,) = _of("InferencePool", docs)
    assert pool["metadata"]["name"] == "llm-base"
    assert {"llm-base", "english-bot", "spanish-bot"} <= _served_models(docs, pool)
    (route,) = _of("HTTPRoute", docs)
    for adapter in ("english-bot", "spanish-bot"):
        rule = _rule_for(route, adapter)
        assert [r["name"] for r in rule["backendRefs"]] == ["llm-base"]
        objective = _find("InferenceObjective", _ns(pool), _objective_header(rule), docs)
        assert objective is not None and objective["spec"]["poolRef"]["name"] == "llm-base"
    ((_deployment, args),) = _epp_deployments(docs)
    config_map = _find("ConfigMap", _ns(pool), "llm-base-epp", docs)
    config = load_config(text=config_map["data"][Path(args.config_file).name])
    weights = {p.pluginRef: p.weight for p in config.schedulingProfiles[0].plugins}
    assert weights["lora-affinity-scorer"] and weights["lora-affinity-scorer"] > 0


# ------------------------------------------------------- what the API server would refuse

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_core_objects_would_be_admitted(path):
    docs = _docs(path)
    namespaces = {d["metadata"]["name"] for _, d in _all() if d["kind"] == "Namespace"}
    for doc in docs:
        meta = doc["metadata"]
        assert _DNS_SUBDOMAIN.match(meta["name"]), meta["name"]
        if doc["kind"] != "Namespace":
            assert _ns(doc) in namespaces | {"default"}, f"{meta['name']}: unknown namespace"
        if doc["kind"] == "Deployment":
            template = doc["spec"]["template"]
            labels = template["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
            for container in template["spec"]["containers"]:
                assert _DNS_LABEL.match(container["name"]) and container["image"]
                names = [p["name"] for p in container.get("ports", []) if "name" in p]
                assert len(names) == len(set(names))
                assert all(_PORT_NAME.match(n) for n in names), names
                for port in container.get("ports", []):
                    assert 0 < port["containerPort"] < 65536
        if doc["kind"] == "Service":
            ports = doc["spec"]["ports"]
            if len(ports) > 1:
                names = [p.get("name") for p in ports]
                assert all(names) and len(set(names)) == len(names), names
            selected = [
                d
                for d in docs
                if d["kind"] == "Deployment"
                and _ns(d) == _ns(doc)
                and doc["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(selected) == 1, f"Service {meta['name']} selects {len(selected)} Deployments"
            container_ports = {
                p["containerPort"]
                for c in selected[0]["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for port in ports:
                assert port.get("targetPort", port["port"]) in container_ports, port
        if doc["kind"] == "RoleBinding":
            assert doc["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
