"""CloudWatch counters over a time window: the load balancers' resets and the NAT gateways' connections.

A NAT gateway that forges resets leaves no trace in the load balancer's reset
counters: its RST goes to the target directly and never passes the NLB. Its
own counters (attempts without establishment, packets dropped) are the place
to look, and flow logs the place to prove it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from diag.aws.model import Inventory
from diag.errors import DiagError

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

NLB_NAMESPACE = "AWS/NetworkELB"
NAT_NAMESPACE = "AWS/NATGateway"
NLB_METRICS = ("TCP_Client_Reset_Count", "TCP_ELB_Reset_Count", "TCP_Target_Reset_Count")
NAT_METRICS = ("ConnectionAttemptCount", "ConnectionEstablishedCount", "IdleTimeoutCount", "PacketsDropCount")
# GetMetricData takes at most 500 queries per call.
_QUERIES_PER_CALL = 500

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` as a duration."""
    match = _SINCE.match(text)
    if not match:
        raise DiagError(f"--since {text!r}: expected a number and a unit s, m, h, d or w (e.g. 24h)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 60:
        raise DiagError(f"--since {text!r}: CloudWatch keeps one-minute data at the finest; give at least 1m")
    if seconds > 455 * 86400:
        raise DiagError(f"--since {text!r}: CloudWatch keeps metrics for 455 days at most")
    return timedelta(seconds=seconds)


def metric_period(window: timedelta) -> int:
    """The finest period CloudWatch still keeps for a window that long (60 s, 5 min, 1 h)."""
    if window <= timedelta(days=15):
        return 60 if window <= timedelta(hours=3) else 300
    return 300 if window <= timedelta(days=63) else 3600


@dataclass(frozen=True)
class MetricTotals:
    """Sums of each metric of one resource over the window; None where CloudWatch had no data point."""

    resource: str  # the load balancer's name or the NAT gateway's id
    namespace: str
    dimension: str
    dimension_value: str
    sums: dict[str, float | None]


@dataclass(frozen=True)
class MetricsWindow:
    start: datetime
    end: datetime
    load_balancers: tuple[MetricTotals, ...]
    nat_gateways: tuple[MetricTotals, ...]


def nat_gateways_on_target_paths(inventory: Inventory) -> list[str]:
    """NAT gateways that are the default route of some target instance's subnet."""
    found = set()
    for instance in inventory.instances.values():
        route = inventory.default_route_of(instance.subnet_id)
        if route is not None and route.kind == "nat-gateway":
            found.add(route.target)
    return sorted(found)


def read_metrics(
    cloudwatch: CloudWatchClient, inventory: Inventory, since: timedelta, now: datetime | None = None
) -> MetricsWindow:
    """Sum every counter over the last ``since`` for the inventory's NLBs and the NAT gateways their targets use."""
    end = now or datetime.now(UTC)
    start = end - since
    resources: list[tuple[str, str, str, str, tuple[str, ...]]] = [
        (b.name, NLB_NAMESPACE, "LoadBalancer", b.dimension, NLB_METRICS) for b in inventory.load_balancers
    ]
    resources += [(n, NAT_NAMESPACE, "NatGatewayId", n, NAT_METRICS) for n in nat_gateways_on_target_paths(inventory)]
    queries: list[dict[str, Any]] = []
    labels: dict[str, tuple[int, str]] = {}
    for position, (_, namespace, dimension, value, metrics) in enumerate(resources):
        for metric in metrics:
            query_id = f"m{len(queries)}"
            labels[query_id] = (position, metric)
            queries.append(
                {
                    "Id": query_id,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": namespace,
                            "MetricName": metric,
                            "Dimensions": [{"Name": dimension, "Value": value}],
                        },
                        "Period": metric_period(since),
                        "Stat": "Sum",
                    },
                    "ReturnData": True,
                }
            )
    sums: list[dict[str, float | None]] = [dict.fromkeys(r[4]) for r in resources]
    paginator = cloudwatch.get_paginator("get_metric_data")
    for first in range(0, len(queries), _QUERIES_PER_CALL):
        batch = queries[first : first + _QUERIES_PER_CALL]
        for page in paginator.paginate(MetricDataQueries=batch, StartTime=start, EndTime=end):  # type: ignore[arg-type]
            for result in page.get("MetricDataResults", []):
                values = result.get("Values", [])
                if not values:
                    continue
                position, metric = labels[result["Id"]]
                sums[position][metric] = (sums[position][metric] or 0.0) + float(sum(values))
    totals = [
        MetricTotals(resource=r[0], namespace=r[1], dimension=r[2], dimension_value=r[3], sums=sums[i])
        for i, r in enumerate(resources)
    ]
    return MetricsWindow(
        start=start,
        end=end,
        load_balancers=tuple(t for t in totals if t.namespace == NLB_NAMESPACE),
        nat_gateways=tuple(t for t in totals if t.namespace == NAT_NAMESPACE),
    )


def _count(value: float | None) -> str:
    return "no data" if value is None else f"{value:g}"


def describe(totals: MetricTotals) -> str:
    """One line per resource: what its counters say."""
    s = totals.sums
    if totals.namespace == NLB_NAMESPACE:
        return (
            f"load balancer {totals.resource}: resets sent by clients {_count(s['TCP_Client_Reset_Count'])}, "
            f"by the load balancer {_count(s['TCP_ELB_Reset_Count'])}, by targets {_count(s['TCP_Target_Reset_Count'])}"
        )
    line = (
        f"NAT gateway {totals.resource}: connection attempts {_count(s['ConnectionAttemptCount'])}, "
        f"established {_count(s['ConnectionEstablishedCount'])}, idle timeouts {_count(s['IdleTimeoutCount'])}, "
        f"packets dropped {_count(s['PacketsDropCount'])}"
    )
    unestablished = unestablished_connections(totals)
    if unestablished:
        line += f" ({unestablished:g} attempts never established)"
    return line


def unestablished_connections(totals: MetricTotals) -> float:
    attempts = totals.sums.get("ConnectionAttemptCount")
    established = totals.sums.get("ConnectionEstablishedCount")
    if attempts is None:
        return 0.0
    return max(attempts - (established or 0.0), 0.0)
