"""What would fix each cause, with the price of each fix."""

from __future__ import annotations

ASYMMETRIC_RETURN_FIXES = (
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
)

PORT_CLOSED_FIXES = (
    "Start the service (or fix its port) on the server: nothing listens on the port the SYN reached.",
    "Check the Service's targetPort against the port the container really listens on; "
    "trade-off: none, but a readiness probe on that port keeps traffic away until it listens.",
)

POLICY_REJECT_FIXES = (
    "Allow the flow in the rejecting firewall (iptables/nftables REJECT rule, NetworkPolicy, security group "
    "with an ICMP/RST reject); trade-off: widening a rule widens who can reach the service, so allow the "
    "client's source range only.",
)

PEER_RESET_FIXES = (
    "Look at the application that sent the RST: an abortive close (SO_LINGER 0), a crash, or closing the "
    "socket with unread data; trade-off: none at the network level, this is the endpoint's decision.",
)

IDLE_TIMEOUT_FIXES = (
    "Enable TCP keepalives below the middlebox's idle timeout (e.g. net.ipv4.tcp_keepalive_time under 350 s "
    "for an AWS NLB or NAT gateway); trade-off: a few extra packets per idle connection.",
    "Raise the middlebox's idle timeout where it can be configured; trade-off: more state held for dead flows.",
)

INJECTED_RESET_FIXES = (
    "Find the injecting device on the path (IPS/DPI, firewall with TCP reset on policy match) from the hop "
    "distance in the evidence, and change its policy; trade-off: depends on why it resets.",
    "Encrypt the transport (TLS does not stop RSTs, but a VPN/IPsec tunnel hides the flow from injectors); "
    "trade-off: tunnel overhead and operations.",
)

TUPLE_REUSE_FIXES = (
    "Avoid reusing a 4-tuple the server still holds: let the client's stack pick ephemeral ports (no fixed "
    "source port), and keep net.ipv4.tcp_tw_reuse and the NAT's port allocation from recycling ports early; "
    "trade-off: more ports in use.",
    "Close connections cleanly (FIN, not a silent drop of state) so the server releases the tuple; trade-off: none.",
)

SILENT_DROP_FIXES = (
    "Find the point where the packet was last seen and look for a DROP rule, a security group or NACL, "
    "a missing route or an MTU black hole after it; trade-off: depends on the rule.",
)

FIXES: dict[str, tuple[str, ...]] = {
    "asymmetric-return": ASYMMETRIC_RETURN_FIXES,
    "port-closed": PORT_CLOSED_FIXES,
    "policy-reject": POLICY_REJECT_FIXES,
    "peer-reset": PEER_RESET_FIXES,
    "idle-timeout": IDLE_TIMEOUT_FIXES,
    "injected-reset": INJECTED_RESET_FIXES,
    "tuple-reuse": TUPLE_REUSE_FIXES,
    "silent-drop": SILENT_DROP_FIXES,
    "unknown": (),
}
