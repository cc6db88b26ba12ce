"""asymmetric-return: the reply left by a path the request did not take.

A stateful box on that path forges a RST as the client (TCP) or re-sources the reply (UDP).
"""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.ASYMMETRIC_RETURN,
    forged=True,
    fixes=(
        "Make the forwarding node SNAT what it sends on to another node (kube-proxy masquerade, "
        "externalTrafficPolicy: Cluster with SNAT) so the reply returns through it and the load balancer; "
        "trade-off: the pod sees the node's address instead of the client's.",
        "Set externalTrafficPolicy: Local so the load balancer only sends to nodes with a local endpoint and "
        "no second hop is needed; trade-off: every node that receives traffic needs a ready endpoint, nodes "
        "without one fail the health check, and load spreads per node rather than per pod.",
        "Route replies back through the node that received the request (CONNMARK on the forwarded flow plus a "
        "policy-routing rule); trade-off: the packet mark space is shared with kube-proxy and the CNI, so pick "
        "bits neither uses and keep the rule in step with node changes.",
        "Disabling client IP preservation on the target group is impossible on TCP_UDP and UDP target groups, and "
        "on its own it does not cure a second hop without SNAT: the pod would then answer the load balancer's "
        "private address straight from its own address, which the load balancer does not know either; pair it "
        "with SNAT on the node and a TCP-only listener (proxy protocol v2 if the client address matters).",
        "Register pods as IP targets (AWS Load Balancer Controller) so the load balancer reaches the pod directly; "
        "trade-off: needs a CNI with VPC-routable pod addresses.",
    ),
)
