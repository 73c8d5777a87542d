"""Flow control: priority bands, fairness, saturation detection and queueing (MISSION item 7).

Front ends enable it from the EndpointPickerConfig::

    flow = FlowControl.from_config(config, metrics=metrics)   # None when flow control is off
    pipeline = build_pipeline(engine, pool, ..., flow_controller=flow)
    if flow is not None:
        flow.attach(pipeline)        # hear every finish: dispatch the moment capacity frees
    ...
    await flow.close()               # queued requests get 503 rejected-shutting-down

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
from igw.flowcontrol.service import FlowControl

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
    "settings_from_config",
]
