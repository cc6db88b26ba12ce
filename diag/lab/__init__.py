"""The lab: a topology's network built from Linux namespaces, veth pairs and iptables.

    from diag.lab import load_topology, Lab

    with Lab(load_topology("incident")) as lab:
        lab.run("client", ["ping", "-c1", lab.address("internet")])

The kernel itself does the NLB's DNAT, the nodes' forwarding and the NAT
gateway's translation and resets; nothing is simulated.
"""

from diag.lab.lab import Lab, LabInfo, lab_down, lab_down_all, lab_up, list_labs
from diag.lab.plan import NETNS_PREFIX, Plan, build_plan, render_shell
from diag.lab.topology import Node, Topology, load_topology, parse_topology, topology_names

__all__ = [
    "NETNS_PREFIX",
    "Lab",
    "LabInfo",
    "Node",
    "Plan",
    "Topology",
    "build_plan",
    "lab_down",
    "lab_down_all",
    "lab_up",
    "list_labs",
    "load_topology",
    "parse_topology",
    "render_shell",
    "topology_names",
]
