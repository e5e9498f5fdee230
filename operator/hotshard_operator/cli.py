"""``hotshard operator``: run the PartitionMap operator, a thin wrapper over ``kopf.run``.

One replica is active at a time: by default the operator runs standalone (no peering object
needed) and the Helm chart deploys it with the Recreate strategy, so an old pod is gone before
a new one starts; ``--peering NAME`` turns on kopf's peering for setups that want a hot spare.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable); default: the whole cluster",
    )
    parser.add_argument(
        "--liveness",
        default="http://127.0.0.1:8080/healthz",
        help="liveness endpoint URL kopf serves (default http://127.0.0.1:8080/healthz)",
    )
    parser.add_argument(
        "--peering",
        default=None,
        help="KopfPeering name for active/standby replicas; default: standalone",
    )


def main(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes.config import ConfigException

    import hotshard_operator.handlers  # noqa: F401  (importing registers the handlers)
    from hotshard_operator.cluster import load_client_config

    # NB: inside kopf a startup failure is retried every minute with a traceback; a machine
    # with no credentials at all is told so once, before kopf starts.
    try:
        load_client_config()
    except (ConfigException, OSError) as exc:
        log.error(
            "hotshard operator: no Kubernetes credentials (in-cluster or kubeconfig): %s", exc
        )
        return 2

    namespaces: list[str] = list(args.namespace)
    log.info(
        "Starting the hotshard operator for %s.",
        ", ".join(namespaces) if namespaces else "all namespaces",
    )
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0
