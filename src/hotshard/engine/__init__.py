"""The pure decision engine: detect hot spots, forecast, plan moves and splits, price them.

Everything here is free of I/O and of the wall clock, so the operator, local mode, the
benchmarks and the simulation all run the same decisions. Feed :class:`Engine` one
:class:`Observation` a second with the current table and pool, and act on the
:class:`Decision` it returns.
"""

from hotshard.engine.config import (
    CalendarEvent,
    CostConfig,
    DetectionConfig,
    EngineConfig,
    PlanningConfig,
    PredictionConfig,
    SignalWeights,
)
from hotshard.engine.core import Engine
from hotshard.engine.cost import WarmPoolAdvice, recommend_warm_pool
from hotshard.engine.model import (
    Action,
    CampaignLoad,
    CostSummary,
    Decision,
    HotSpot,
    Observation,
    PartitionLoad,
    PoolState,
    ShardHealth,
    ShardLoad,
)
from hotshard.engine.planning import lease_budget

__all__ = [
    "Action",
    "CalendarEvent",
    "CampaignLoad",
    "CostConfig",
    "CostSummary",
    "Decision",
    "DetectionConfig",
    "Engine",
    "EngineConfig",
    "HotSpot",
    "Observation",
    "PartitionLoad",
    "PlanningConfig",
    "PoolState",
    "PredictionConfig",
    "ShardHealth",
    "ShardLoad",
    "SignalWeights",
    "WarmPoolAdvice",
    "lease_budget",
    "recommend_warm_pool",
]
