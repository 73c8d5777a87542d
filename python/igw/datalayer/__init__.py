"""Endpoint discovery and model-server metric scraping.

``DataLayer`` keeps a ``Pool``'s core table current from each endpoint's ``/metrics`` page;
``StaticDiscovery`` and ``FileDiscovery`` set the pool's membership outside Kubernetes.
"""

from igw.datalayer.discovery import DiscoveryError, FileDiscovery, StaticDiscovery
from igw.datalayer.engines import (
    ENGINE_LABEL,
    ENGINES,
    EngineSpec,
    Scraped,
    Series,
    custom_engine,
    extract,
)
from igw.datalayer.layer import DataLayer, DataLayerError, EndpointState, ModelInfo
from igw.datalayer.outlier import OutlierPolicy
from igw.datalayer.promtext import MetricsParseError

__all__ = [
    "ENGINES",
    "ENGINE_LABEL",
    "DataLayer",
    "DataLayerError",
    "DiscoveryError",
    "EndpointState",
    "EngineSpec",
    "FileDiscovery",
    "MetricsParseError",
    "ModelInfo",
    "OutlierPolicy",
    "Scraped",
    "Series",
    "StaticDiscovery",
    "custom_engine",
    "extract",
]
