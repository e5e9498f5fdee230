"""hotshard keeps a real-time bidding fleet inside its latency budget when traffic turns hot.

The public surface is small: the routing contract (:mod:`hotshard.routing`), the pure decision
engine (:mod:`hotshard.engine`) and the command line (:mod:`hotshard.cli`). The data plane lives
in ``hotshard_bidder`` and the Kubernetes operator in ``hotshard_operator``.
"""

__version__ = "0.1.0"
