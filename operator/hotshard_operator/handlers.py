"""kopf registrations for PartitionMap, and nothing else: each handler delegates at once.

Importing this module registers the handlers with kopf's default registry; ``cli`` does so
before ``kopf.run``. What the handlers do lives in ``reconcile`` (the logic), ``cluster``
(Kubernetes I/O) and ``signals`` (Prometheus), so it can be tested without kopf.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from hotshard_operator.cluster import KubernetesCluster, load_client_config
from hotshard_operator.loopstep import LoopStep, build_loop_step
from hotshard_operator.reconcile import (
    FleetRef,
    ensure_fleet,
    parse_spec,
    report_invalid_spec,
    run_tick,
)
from hotshard_operator.resources import GROUP, PLURAL, VERSION, routing_config_map_name
from hotshard_operator.status import PartitionMapStatus

PREFIX = "hotshard.io"
RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
def configure_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping under our own prefix and post only our own Events."""
    load_client_config()
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # NB: kopf would post an Event per handler run; users get ours (split, commit, ...) only.
    settings.posting.level = logging.WARNING


def _ref(meta: kopf.Meta, body: kopf.Body) -> FleetRef:
    return FleetRef(
        name=str(meta.name),
        namespace=str(meta.namespace),
        uid=str(meta.uid),
        generation=int(body.metadata.get("generation", 0)),
    )


def _status(body: kopf.Body) -> PartitionMapStatus:
    return PartitionMapStatus.model_validate(dict(body.get("status", {})))


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def ensure(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, **_: Any) -> None:
    """Build (or re-adopt) the fleet: children, routing ConfigMap, warm pool."""
    ref, status = _ref(meta, body), _status(body)
    cluster = KubernetesCluster()
    parsed, message = parse_spec(dict(spec))
    if parsed is None:
        await report_invalid_spec(ref, status, message, cluster)
        return
    store = cluster.routing_store(ref.namespace, routing_config_map_name(ref.name, parsed))
    await ensure_fleet(ref, parsed, status, cluster, store)


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def detect(
    body: kopf.Body, meta: kopf.Meta, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any
) -> None:
    """Tick the control loop every ``spec.detection.interval`` seconds while the map exists.

    A daemon rather than a timer, because the interval is per PartitionMap and may change, and
    because the loop (and its engine's baselines) must live from one tick to the next. A new
    spec generation builds a new loop.
    """
    cluster = KubernetesCluster()
    step: LoopStep | None = None
    built_for = -1
    cost = 0.0
    last = time.monotonic()
    try:
        while not stopped:
            parsed, message = parse_spec(dict(body.get("spec", {})))
            if parsed is None:
                logger.warning("Not ticking: %s", message)
                await stopped.wait(5.0)  # 5 s: an invalid spec waits for a human
                continue
            ref = _ref(meta, body)
            if step is None or ref.generation != built_for:
                if step is not None:
                    await step.aclose()
                store = cluster.routing_store(
                    ref.namespace, routing_config_map_name(ref.name, parsed)
                )
                step, built_for = build_loop_step(ref, parsed, cluster, store), ref.generation
            status = _status(body)
            # NB: our last status patch may not be in `body` yet; never let the cost go back.
            status = status.model_copy(update={"cost_so_far": max(cost, status.cost_so_far)})
            now = time.monotonic()
            status = await run_tick(ref, parsed, status, cluster, step, elapsed_s=now - last)
            cost, last = status.cost_so_far, now
            await stopped.wait(parsed.detection.interval)
    finally:
        if step is not None:
            await step.aclose()
