"""``diag aws``: read an AWS account's load-balancing setup, judge it, and turn it into a lab.

- ``session``: clients from the standard credential chain; botocore errors as one line.
- ``model``: the setup as plain values.
- ``inventory``: reads it (paginated).
- ``findings``: judges it, as ``diag.report.Finding`` objects.
- ``metrics``: CloudWatch counters of the load balancers and NAT gateways.
- ``flowlogs``: VPC flow log records and the forged-reset pattern in them.
- ``export``: the setup as a lab topology.
"""
