"""igw's vLLM-compatible model-server simulator (``igw sim``); see docs/simulator.md.

``SimFleet`` starts N replicas in the running event loop; ``igw.sim.model`` is the latency
model as pure logic.
"""

from igw.sim.fleet import DEFAULT_MODEL, SimFleet
from igw.sim.model import EngineParams
from igw.sim.replica import Faults, SimReplica

__all__ = ["DEFAULT_MODEL", "EngineParams", "Faults", "SimFleet", "SimReplica"]
