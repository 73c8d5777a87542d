"""Kubernetes integration: InferencePool / pod / InferenceObjective watches for ``igw epp``.

``config`` finds the API server (in-cluster or kubeconfig), ``client`` lists and watches over
aiohttp, ``informer`` keeps a consumer in step (list, watch, relist on 410, back-off),
``pool``/``pods`` turn an InferencePool and its pods into endpoints, ``objectives`` turns
InferenceObjective / InferenceModelRewrite objects into igw's stores, ``discovery`` wires
them for one pool, and ``leader`` elects one ready replica per pool over a Lease.
"""

from igw.k8s.client import ApiError, Gone, KubeClient, NotFound, Resource
from igw.k8s.config import ClusterConfig, KubeConfigError
from igw.k8s.config import load as load_config
from igw.k8s.discovery import KubernetesDiscovery
from igw.k8s.informer import Backoff, Reflector
from igw.k8s.leader import LeaderElector
from igw.k8s.pool import PoolSpec, PoolSpecError, parse_pool, parse_ports, parse_selector

__all__ = [
    "ApiError",
    "Backoff",
    "ClusterConfig",
    "Gone",
    "KubeClient",
    "KubeConfigError",
    "KubernetesDiscovery",
    "LeaderElector",
    "NotFound",
    "PoolSpec",
    "PoolSpecError",
    "Reflector",
    "Resource",
    "load_config",
    "parse_pool",
    "parse_ports",
    "parse_selector",
]
