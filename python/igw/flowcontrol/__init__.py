"""Flow control: priority bands, fairness, saturation detection and queueing (MISSION item 7).

Front ends enable it from the EndpointPickerConfig, after ``build_pipeline``::

    flow = install(pipeline, config, metrics=metrics)   # None when flow control is off
    ...
    if flow is not None:
        await flow.close()           # queued requests get 503 rejected-shutting-down

``install`` gives the legacy stage the configured detector and, when the config enables
flow control, attaches a ``FlowControl`` (which also hears every ``Pipeline.finish``, so it
dispatches the moment capacity frees). ``FlowControl.from_configs`` serves front ends with
one config per pool.

With flow control off the flow-control stage keeps the reference's legacy path (shed
priority < 0 with 429 when saturated); ``detector_from_config`` gives it the configured
saturation detector.
"""

from igw.flowcontrol.controller import PoolController
from igw.flowcontrol.detectors import ConcurrencyDetector, UtilizationDetector
from igw.flowcontrol.params import (
    BandSettings,
    DetectorSpec,
    FlowControlSettings,
    detector_from_config,
    flow_control_enabled,
    settings_from_config,
)
from igw.flowcontrol.service import FlowControl, install

__all__ = [
    "BandSettings",
    "ConcurrencyDetector",
    "DetectorSpec",
    "FlowControl",
    "FlowControlSettings",
    "PoolController",
    "UtilizationDetector",
    "detector_from_config",
    "flow_control_enabled",
    "install",
    "settings_from_config",
]
