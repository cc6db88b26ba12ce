"""The flow table: one row per connection per capture point, as Zeek's conn.log summarises it.

``table.build_flows`` is the entry point; ``keys`` gives every packet its flow
id, ``walk`` runs each flow's packets through ``tcpstate`` (Zeek's endpoint
states, history letters, conn_state) and ``copies`` tells the copies of one
packet that a capture point saw twice (a router's two interfaces, ``-i any``).
"""

from diag.flows.columns import FLOW_COLUMNS, describe_flow_columns
from diag.flows.table import build_flows, flow_ids

__all__ = ["FLOW_COLUMNS", "build_flows", "describe_flow_columns", "flow_ids"]
