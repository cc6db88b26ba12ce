"""``diag aws``: read an account, judge it, export it, against moto running as a real HTTP server.

The server starts once per test session on a free loopback port; each test
resets it and builds the account it needs. Credentials are fake and set in the
test's own environment; nothing here can reach AWS.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from conftest import require_root, require_tools
from moto_fixture import fresh_account

from diag.aws.assess import assess
from diag.aws.findings import check
from diag.aws.inventory import read_inventory
from diag.aws.metrics import read_metrics
from diag.aws.model import default_preserve_client_ip
from diag.aws.session import AwsClients, connect, translate
from diag.cli import main
from diag.errors import DiagError
from diag.lab import Lab, Topology, load_topology
from diag.lab.probe import tcp_probe, udp_probe
from diag.lab.topology import K8sNodeConfig, NlbConfig

REGION = "eu-west-1"
pytest.importorskip("moto.server")


@pytest.fixture
def endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty account and fake credentials in this test's environment only."""
    fresh_account(moto_endpoint, monkeypatch)
    return moto_endpoint


@functools.cache
def client(endpoint: str, service: str) -> Any:
    """A plain boto3 client for building the account (cached: creating one costs a tenth of a second)."""
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)  # type: ignore[call-overload]


@dataclass
class Account:
    """IDs of what ``build_account`` created, for assertions."""

    vpc_id: str
    public_subnet: str
    private_subnet: str
    nat_gateway: str
    private_table: str
    instances: list[str]
    lb_arn: str
    lb_name: str
    tg_arn: str
    listener_arn: str


def build_account(
    endpoint: str,
    *,
    listener_protocol: str = "TCP_UDP",
    target_type: str = "instance",
    preserve_client_ip: bool | None = None,
    nodes_default_route: str = "nat",
    name: str = "incident",
    explicit_private_association: bool = True,
    scheme: str = "internet-facing",
    nodes: int = 2,
) -> Account:
    """The incident's account: NLB -> instance targets in a private subnet whose default route is a NAT gateway.

    Arguments turn it into the fixed variants (ip targets, preservation off,
    nodes whose default route is the internet gateway).
    """
    ec2 = client(endpoint, "ec2")
    elbv2 = client(endpoint, "elbv2")
    vpc_id = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    public = ec2.create_subnet(VpcId=vpc_id, CidrBlock="198.18.0.0/24", AvailabilityZone=f"{REGION}a")
    private = ec2.create_subnet(VpcId=vpc_id, CidrBlock="198.18.1.0/24", AvailabilityZone=f"{REGION}a")
    public_subnet, private_subnet = public["Subnet"]["SubnetId"], private["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
    public_table = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=public_table, SubnetId=public_subnet)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public_subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"]
    if explicit_private_association:
        private_table = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=private_table, SubnetId=private_subnet)
    else:
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}]
        )["RouteTables"]
        private_table = tables[0]["RouteTableId"]
    if nodes_default_route == "nat":
        ec2.create_route(RouteTableId=private_table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    elif nodes_default_route == "igw":
        ec2.create_route(RouteTableId=private_table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    instances = [
        # One reservation each, as separately launched nodes are: DescribeInstances pages by reservation.
        ec2.run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1, SubnetId=private_subnet)["Instances"][0][
            "InstanceId"
        ]
        for _ in range(nodes)
    ]
    lb = elbv2.create_load_balancer(
        Name=name, Subnets=[public_subnet], Type="network", Scheme=scheme
    )["LoadBalancers"][0]
    group_protocol = listener_protocol
    tg = elbv2.create_target_group(
        Name=f"{name}-tg", Protocol=group_protocol, Port=30080, VpcId=vpc_id, TargetType=target_type
    )["TargetGroups"][0]
    if preserve_client_ip is not None:
        elbv2.modify_target_group_attributes(
            TargetGroupArn=tg["TargetGroupArn"],
            Attributes=[{"Key": "preserve_client_ip.enabled", "Value": str(preserve_client_ip).lower()}],
        )
    if target_type == "instance":
        targets = [{"Id": instance, "Port": 30080} for instance in instances]
    else:
        targets = [{"Id": "198.18.1.50", "Port": 8080}, {"Id": "198.18.1.51", "Port": 8080}]
    elbv2.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=targets)
    listener = elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"],
        Protocol=listener_protocol,
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}],
    )["Listeners"][0]
    return Account(
        vpc_id=vpc_id,
        public_subnet=public_subnet,
        private_subnet=private_subnet,
        nat_gateway=nat,
        private_table=private_table,
        instances=instances,
        lb_arn=lb["LoadBalancerArn"],
        lb_name=name,
        tg_arn=tg["TargetGroupArn"],
        listener_arn=listener["ListenerArn"],
    )


@functools.cache
def clients_for(endpoint: str) -> AwsClients:
    """diag's own clients, built the way the command line builds them."""
    return connect(region=REGION, endpoint_url=endpoint)


def test_incident_account_is_read_completely(endpoint: str) -> None:
    account = build_account(endpoint)
    inventory = read_inventory(clients_for(endpoint))
    (balancer,) = inventory.load_balancers
    assert balancer.arn == account.lb_arn
    assert balancer.scheme == "internet-facing"
    (listener,) = balancer.listeners
    assert (listener.protocol, listener.port) == ("TCP_UDP", 80)
    assert listener.target_group_arns == (account.tg_arn,)
    assert listener.idle_timeout_s.value == 350
    group = inventory.target_groups[account.tg_arn]
    assert group.target_type == "instance"
    assert group.preserve_client_ip.value is True
    assert sorted(t.id for t in group.targets) == sorted(account.instances)
    assert set(inventory.instances) == set(account.instances)
    route = inventory.default_route_of(account.private_subnet)
    assert route is not None
    assert (route.kind, route.target) == ("nat-gateway", account.nat_gateway)
    assert account.nat_gateway in inventory.nat_gateways
    assert inventory.vpc_cidrs[account.vpc_id] == ("198.18.0.0/16",)
    print(inventory)


def test_incident_account_has_asymmetric_return_finding(endpoint: str) -> None:
    account = build_account(endpoint)
    findings = check(read_inventory(clients_for(endpoint)))
    assert [f.cause for f in findings] == ["asymmetric-return"]
    finding = findings[0]
    assert finding.origin == account.nat_gateway
    text = "\n".join(finding.evidence)
    assert account.lb_arn in text and account.tg_arn in text and account.private_table in text
    assert any("not possible" in fix and "TCP_UDP" in fix for fix in finding.fixes)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"target_type": "ip"}, id="ip-targets"),
        pytest.param({"listener_protocol": "TCP", "preserve_client_ip": False}, id="tcp-preservation-off"),
        pytest.param({"nodes_default_route": "igw"}, id="nodes-default-route-igw"),
        pytest.param({"nodes_default_route": "none"}, id="nodes-no-default-route"),
    ],
)
def test_fixed_variants_have_no_finding(endpoint: str, variant: dict[str, Any]) -> None:
    build_account(endpoint, **variant)
    inventory = read_inventory(clients_for(endpoint))
    assert len(inventory.load_balancers) == 1
    assert check(inventory) == []


def test_tcp_ip_targets_default_to_no_preservation(endpoint: str) -> None:
    account = build_account(endpoint, listener_protocol="TCP", target_type="ip")
    group = read_inventory(clients_for(endpoint)).target_groups[account.tg_arn]
    # moto does not return preserve_client_ip.enabled: AWS's documented default stands in, and says so.
    assert (group.preserve_client_ip.value, group.preserve_client_ip.source) == (False, "default")


def test_tcp_listener_with_preservation_on_offers_turning_it_off(endpoint: str) -> None:
    build_account(endpoint, listener_protocol="TCP", preserve_client_ip=True)
    (finding,) = check(read_inventory(clients_for(endpoint)))
    assert finding.cause == "asymmetric-return"
    assert any(fix.startswith("turn client IP preservation off") for fix in finding.fixes)
    assert not any("not possible" in fix for fix in finding.fixes)


def test_subnet_without_association_uses_the_main_route_table(endpoint: str) -> None:
    account = build_account(endpoint, explicit_private_association=False)
    inventory = read_inventory(clients_for(endpoint))
    subnet = inventory.subnets[account.private_subnet]
    assert not subnet.explicit_association
    assert inventory.route_tables[subnet.route_table_id].main
    (finding,) = check(inventory)
    assert any("main table" in line for line in finding.evidence)


def test_listener_idle_timeout_is_read_from_the_api(endpoint: str) -> None:
    account = build_account(endpoint, listener_protocol="TCP", preserve_client_ip=True)
    client(endpoint, "elbv2").modify_listener_attributes(
        ListenerArn=account.listener_arn, Attributes=[{"Key": "tcp.idle_timeout.seconds", "Value": "900"}]
    )
    (balancer,) = read_inventory(clients_for(endpoint)).load_balancers
    assert balancer.listeners[0].idle_timeout_s.value == 900
    assert balancer.listeners[0].idle_timeout_s.source == "api"


def test_load_balancers_and_instances_are_read_across_pages(endpoint: str) -> None:
    account = build_account(endpoint, nodes=7)
    elbv2 = client(endpoint, "elbv2")
    for number in range(3):
        elbv2.create_load_balancer(Name=f"extra-{number}", Subnets=[account.public_subnet], Type="network")
    # One balancer per page (and five instances, EC2's smallest page): every page must be followed.
    inventory = read_inventory(clients_for(endpoint), page_size=1)
    assert sorted(b.name for b in inventory.load_balancers) == ["extra-0", "extra-1", "extra-2", "incident"]
    assert sorted(inventory.instances) == sorted(account.instances)
    (finding,) = check(inventory)
    assert all(instance in "\n".join(finding.evidence) for instance in account.instances)


def test_lb_selects_one_balancer_by_name_or_arn(endpoint: str) -> None:
    account = build_account(endpoint)
    client(endpoint, "elbv2").create_load_balancer(Name="other", Subnets=[account.public_subnet], Type="network")
    by_name = read_inventory(clients_for(endpoint), lb="incident")
    by_arn = read_inventory(clients_for(endpoint), lb=account.lb_arn)
    assert [b.arn for b in by_name.load_balancers] == [b.arn for b in by_arn.load_balancers] == [account.lb_arn]


def test_unknown_arn_is_a_clear_error(endpoint: str) -> None:
    account = build_account(endpoint)
    missing = account.lb_arn.rsplit("/", 1)[0] + "/0123456789abcdef"
    with pytest.raises(DiagError, match=f"no load balancer '{missing}'"):
        read_inventory(clients_for(endpoint), lb=missing)


def test_internal_balancer_is_a_weaker_finding(endpoint: str) -> None:
    build_account(endpoint, scheme="internal")
    (finding,) = check(read_inventory(clients_for(endpoint)))
    assert finding.confidence == 0.5
    assert any("internal" in line and "local route" in line for line in finding.evidence)


@pytest.mark.parametrize(
    ("target_type", "protocol", "preserved"),
    [("instance", "TCP", True), ("instance", "TCP_UDP", True), ("ip", "TCP", False), ("ip", "TLS", False),
     ("ip", "UDP", True), ("ip", "TCP_UDP", True), ("lambda", "", False)],
)
def test_documented_preservation_defaults(target_type: str, protocol: str, preserved: bool) -> None:
    assert default_preserve_client_ip(target_type, protocol) is preserved


def test_application_load_balancers_are_skipped(endpoint: str) -> None:
    account = build_account(endpoint)
    client(endpoint, "elbv2").create_load_balancer(Name="web", Subnets=[account.public_subnet], Type="application")
    assert [b.name for b in read_inventory(clients_for(endpoint)).load_balancers] == ["incident"]


def put_metrics(endpoint: str, namespace: str, dimension: str, value: str, counts: dict[str, float]) -> None:
    now = datetime.now(UTC)
    data = []
    for metric, total in counts.items():
        # Two data points per metric, minutes apart, so the sum is over several periods.
        for minutes_ago, share in ((50, 0.25), (5, 0.75)):
            data.append(
                {
                    "MetricName": metric,
                    "Dimensions": [{"Name": dimension, "Value": value}],
                    "Timestamp": now - timedelta(minutes=minutes_ago),
                    "Value": total * share,
                    "Unit": "Count",
                }
            )
    client(endpoint, "cloudwatch").put_metric_data(Namespace=namespace, MetricData=data)


def test_metrics_are_summed_per_load_balancer_and_nat_gateway(endpoint: str) -> None:
    account = build_account(endpoint)
    # AWS spells it net/incident/<id>; moto writes app/ even for network balancers. The rule is the same.
    dimension = account.lb_arn.split(":loadbalancer/")[1]
    put_metrics(endpoint, "AWS/NetworkELB", "LoadBalancer", dimension,
                {"TCP_Client_Reset_Count": 8, "TCP_Target_Reset_Count": 4})
    put_metrics(endpoint, "AWS/NATGateway", "NatGatewayId", account.nat_gateway,
                {"ConnectionAttemptCount": 400, "ConnectionEstablishedCount": 100, "PacketsDropCount": 12})
    # A different NAT gateway's data must not leak into ours.
    put_metrics(endpoint, "AWS/NATGateway", "NatGatewayId", "nat-0ther", {"ConnectionAttemptCount": 7})
    inventory = read_inventory(clients_for(endpoint))
    window = read_metrics(clients_for(endpoint).cloudwatch, inventory, timedelta(hours=2))
    (lb,) = window.load_balancers
    assert lb.sums == {"TCP_Client_Reset_Count": 8, "TCP_ELB_Reset_Count": None, "TCP_Target_Reset_Count": 4}
    (nat,) = window.nat_gateways
    assert nat.resource == account.nat_gateway
    assert nat.sums == {
        "ConnectionAttemptCount": 400, "ConnectionEstablishedCount": 100,
        "IdleTimeoutCount": None, "PacketsDropCount": 12,
    }
    assessment = assess(inventory, window)
    (finding,) = assessment.report.findings
    assert any("established 100" in line and "300 attempts never established" in line for line in finding.evidence)
    # Only the last 30 minutes: the older data points fall outside.
    recent = read_metrics(clients_for(endpoint).cloudwatch, inventory, timedelta(minutes=30))
    assert recent.load_balancers[0].sums["TCP_Client_Reset_Count"] == 6


def test_load_balancer_resets_make_an_idle_timeout_finding(endpoint: str) -> None:
    account = build_account(endpoint, nodes_default_route="igw")
    dimension = account.lb_arn.split(":loadbalancer/")[1]
    put_metrics(endpoint, "AWS/NetworkELB", "LoadBalancer", dimension, {"TCP_ELB_Reset_Count": 20})
    inventory = read_inventory(clients_for(endpoint))
    report = assess(inventory, read_metrics(clients_for(endpoint).cloudwatch, inventory, timedelta(hours=1))).report
    (finding,) = report.findings
    assert finding.cause == "idle-timeout"
    assert "20" in finding.summary and "350 s" in finding.summary
    # Without resets counted, nothing is said.
    five_hours_ago = datetime.now(UTC) - timedelta(hours=5)
    quiet = read_metrics(clients_for(endpoint).cloudwatch, inventory, timedelta(minutes=1), five_hours_ago)
    assert assess(inventory, quiet).report.findings == ()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


V5_FORMAT = (
    "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} "
    "${start} ${end} ${action} ${log-status} ${tcp-flags} ${pkt-srcaddr} ${pkt-dstaddr} ${flow-direction}"
)


def incident_flow_records(node_eni: str, node_ip: str, nat_eni: str) -> list[str]:
    """What flow logs show in the incident, plus a healthy flow and a genuine client abort."""
    t = int(time.time()) - 120
    client, port = "203.0.113.10", 38622
    healthy, aborted = "203.0.113.11", "203.0.113.12"
    return [
        # The node sends SYN-ACKs (retransmitted: 3 packets) toward the client...
        f"5 {node_eni} {node_ip} {client} 30080 {port} 6 3 180 {t} {t + 60} ACCEPT OK 18 {node_ip} {client} egress",
        # ...the NAT gateway's interface sees them go out by the default route...
        f"5 {nat_eni} {node_ip} {client} 30080 {port} 6 3 180 {t} {t + 60} ACCEPT OK 18 {node_ip} {client} ingress",
        # ...and the client's direction has SYNs and a RST, never an ACK.
        f"5 {node_eni} {client} {node_ip} {port} 30080 6 6 320 {t} {t + 60} ACCEPT OK 6 {client} {node_ip} ingress",
        # A healthy connection: handshake, data, FIN.
        f"5 {node_eni} {node_ip} {healthy} 30080 40000 6 5 900 {t} {t + 60} ACCEPT OK 27 {node_ip} {healthy} egress",
        f"5 {node_eni} {healthy} {node_ip} 40000 30080 6 5 400 {t} {t + 60} ACCEPT OK 27 {healthy} {node_ip} ingress",
        # A client that really aborted after sending data (RST with ACK and PSH): not forged.
        f"5 {node_eni} {node_ip} {aborted} 30080 40001 6 4 500 {t} {t + 60} ACCEPT OK 26 {node_ip} {aborted} egress",
        f"5 {node_eni} {aborted} {node_ip} 40001 30080 6 4 300 {t} {t + 60} ACCEPT OK 30 {aborted} {node_ip} ingress",
        "this line is not a flow log record",
    ]


def node_interface(endpoint: str, instance_id: str) -> tuple[str, str]:
    reservations = client(endpoint, "ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    instance = reservations[0]["Instances"][0]
    return instance["NetworkInterfaces"][0]["NetworkInterfaceId"], instance["PrivateIpAddress"]


def nat_interface(endpoint: str, nat_id: str) -> str:
    nat = client(endpoint, "ec2").describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"][0]
    return str(nat["NatGatewayAddresses"][0]["NetworkInterfaceId"])


def test_check_with_flow_logs_group_confirms_the_nat_gateway(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    account = build_account(endpoint)
    node_eni, node_ip = node_interface(endpoint, account.instances[0])
    logs = client(endpoint, "logs")
    logs.create_log_group(logGroupName="vpc-flow")
    logs.create_log_stream(logGroupName="vpc-flow", logStreamName=node_eni)
    now_ms = int(time.time() * 1000)
    records = incident_flow_records(node_eni, node_ip, nat_interface(endpoint, account.nat_gateway))
    logs.put_log_events(
        logGroupName="vpc-flow", logStreamName=node_eni,
        logEvents=[{"timestamp": now_ms - 60_000 + i, "message": line} for i, line in enumerate(records)],
    )
    status, out, _ = run_cli(
        ["aws", "check", "--region", REGION, "--endpoint-url", endpoint, "--no-metrics",
         "--flow-logs-group", "vpc-flow", "--format", V5_FORMAT, "--json", "-"],
        capsys,
    )
    assert status == 0
    document = json.loads(out)
    assert document["schema"] == "diag.report/1"
    assert document["verdict"]["cause"] == "asymmetric-return"
    assert document["verdict"]["confidence"] == 0.95
    (finding,) = document["findings"]
    assert finding["origin"] == account.nat_gateway
    assert finding["flow"]["client"] == "203.0.113.10:38622"
    assert finding["claimed_src"] == "203.0.113.10"  # the RST claimed to come from the client
    assert any("NAT gateway's interface" in line for line in finding["evidence"])
    assert not any("203.0.113.12" in line or "203.0.113.11" in line for line in finding["evidence"])
    assert any("1 flow log line(s)" in w for w in document["warnings"])


def test_check_with_flow_log_file(endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    account = build_account(endpoint)
    node_eni, node_ip = node_interface(endpoint, account.instances[0])
    # A file as delivered to S3: the format in a header line, no NAT gateway interface among the records.
    header = " ".join(token[2:-1] for token in V5_FORMAT.split())
    lines = [r for r in incident_flow_records(node_eni, node_ip, "eni-elsewhere") if "eni-elsewhere" not in r]
    path = tmp_path / "flow.log"
    path.write_text("\n".join([header, *lines]) + "\n")
    status, out, err = run_cli(
        ["aws", "check", "--region", REGION, "--endpoint-url", endpoint, "--no-metrics", "--flow-logs", str(path)],
        capsys,
    )
    assert status == 0, err
    # Without the NAT gateway's own records the evidence is the missing ACK: 0.85, matched to the NAT gateway
    # on the node's subnet route.
    assert out.splitlines()[0] == "verdict: asymmetric-return (confidence 0.85)"
    assert "flow logs: 6 record(s), 1 bad line(s), 0 without data; 1 flow(s) with a reset the client" in out
    assert path.read_text().count("\n") == 8  # the user's file is untouched


def test_check_text_puts_the_verdict_first(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    account = build_account(endpoint)
    status, out, err = run_cli(["aws", "check", "--region", REGION, "--endpoint-url", endpoint], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "verdict: asymmetric-return (confidence 0.80)"
    assert account.nat_gateway in lines[1]
    assert "fixes:" in out and "not possible" in out
    assert "do not show in the load balancer's reset counters" in out


def test_check_healthy_account_says_so(endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build_account(endpoint, target_type="ip")
    report_path = tmp_path / "report.json"
    status, out, _ = run_cli(
        ["aws", "check", "--region", REGION, "--endpoint-url", endpoint, "--json", str(report_path)], capsys
    )
    assert status == 0
    assert out.startswith("verdict: healthy")
    assert "ip targets" in out
    document = json.loads(report_path.read_text())
    assert document["verdict"]["cause"] == "healthy" and document["findings"] == []


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--region", REGION], "no AWS credentials found"),
        ([], "no AWS region"),
        (["--region", "xx-nowhere-7"], "unknown AWS region 'xx-nowhere-7'"),
        (["--region", REGION, "--profile", "nope"], "AWS profile 'nope' not found"),
        (["--region", REGION, "--since", "yesterday"], "--since 'yesterday'"),
        (["--region", REGION, "--flow-logs", "/nonexistent/flow.log"], "not found"),
        (["--region", REGION, "--format", "${version} ${bogus}"], "unknown field 'bogus'"),
    ],
)
def test_bad_setup_is_one_line_and_status_2(
    no_aws_environment: None, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(["aws", "check", *argv], capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("diag: ") and message in err


def test_unknown_load_balancer_is_a_clear_error(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    build_account(endpoint)
    status, _, err = run_cli(
        ["aws", "check", "--region", REGION, "--endpoint-url", endpoint, "--lb", "nope"], capsys
    )
    assert status == 2
    assert err == f"diag: no load balancer 'nope' in region {REGION}\n"


ELB_READS = [
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeListenerAttributes", "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetHealth",
]
EC2_READS = ["ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeRouteTables", "ec2:DescribeNatGateways",
             "ec2:DescribeVpcs"]


@pytest.mark.parametrize(
    ("allowed", "extra", "status", "message"),
    [
        pytest.param(
            [a for a in ELB_READS if not a.endswith("TargetGroupAttributes")], [], 2,
            "diag: access denied: the credentials lack permission elasticloadbalancing:DescribeTargetGroupAttributes",
            id="target-group-attributes",
        ),
        pytest.param(
            ELB_READS + EC2_READS, [], 2,
            "diag: access denied: the credentials lack permission cloudwatch:GetMetricData "
            "(or skip metrics with --no-metrics)",
            id="metrics",
        ),
        pytest.param(
            [a for a in ELB_READS if not a.endswith("ListenerAttributes")] + EC2_READS, ["--no-metrics"], 0,
            "elasticloadbalancing:DescribeListenerAttributes; listener idle timeouts are assumed",
            id="listener-attributes-only-noted",
        ),
    ],
)
def test_access_denied_names_the_missing_permission(
    endpoint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    allowed: list[str], extra: list[str], status: int, message: str,
) -> None:
    """moto enforces IAM for a user whose policy lacks one permission; the error names exactly that one."""
    build_account(endpoint)
    iam = client(endpoint, "iam")
    iam.create_user(UserName="auditor")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}
    iam.put_user_policy(UserName="auditor", PolicyName="partial", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="auditor")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    # Not a form: werkzeug would swallow a form-encoded body and moto would read an empty count.
    set_auth = functools.partial(
        urllib.request.Request, f"{endpoint}/moto-api/reset-auth", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(set_auth(data=b"0")).close()  # enforce IAM from the next request on
    try:
        result, out, err = run_cli(["aws", "check", "--region", REGION, "--endpoint-url", endpoint, *extra], capsys)
    finally:
        urllib.request.urlopen(set_auth(data=b"inf")).close()
    assert result == status
    if status == 2:
        assert err == message + "\n"
    else:
        assert out.startswith("verdict: asymmetric-return") and message in out


@pytest.mark.parametrize(
    ("response", "operation", "expected"),
    [
        pytest.param(
            {"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized to perform this."}},
            "DescribeRouteTables", "access denied: the credentials lack permission ec2:DescribeRouteTables",
            id="ec2-message-without-action",
        ),
        pytest.param(
            {"Error": {"Code": "AccessDenied", "Message": "User: u is not authorized to perform: iam:GetUser on x"}},
            "GetUser", "access denied: the credentials lack permission iam:GetUser",
            id="action-from-message",
        ),
        pytest.param(
            {"Error": {"Code": "403", "Message": "<ErrorResponse>..."}, "ResponseMetadata": {"HTTPStatusCode": 403}},
            "GetMetricData", "access denied: the credentials lack permission cloudwatch:GetMetricData",
            id="unparsed-403",
        ),
        pytest.param(
            {"Error": {"Code": "InvalidClientTokenId", "Message": "The security token included in the request is "
                       "invalid."}, "ResponseMetadata": {"HTTPStatusCode": 403}},
            "DescribeLoadBalancers",
            "AWS rejected the credentials (InvalidClientTokenId) on DescribeLoadBalancers: The security token "
            "included in the request is invalid.",
            id="bad-key",
        ),
        pytest.param(
            {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "DescribeTargetHealth",
            "AWS error on DescribeTargetHealth: Throttling: Rate exceeded", id="other",
        ),
    ],
)
def test_botocore_errors_become_one_line(response: dict[str, Any], operation: str, expected: str) -> None:
    assert str(translate(botocore.exceptions.ClientError(response, operation))) == expected  # type: ignore[arg-type]


def export(endpoint: str, capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[Topology, str]:
    """Run export-lab, then load its file with the lab's own loader (no lab is built)."""
    status, out, err = run_cli(
        ["aws", "export-lab", "--region", REGION, "--endpoint-url", endpoint, "-o", str(path), *extra], capsys
    )
    assert status == 0, err
    assert out == f"wrote {path}\n"
    return load_topology(str(path)), err


def test_export_lab_writes_the_incident_as_a_lab_topology(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    account = build_account(endpoint)
    topology, notes = export(endpoint, capsys, tmp_path / "account.toml")
    assert notes == ""
    nlb = topology.node("nlb").config
    assert isinstance(nlb, NlbConfig)
    assert (nlb.protocol, nlb.port, nlb.idle_timeout) == ("TCP_UDP", 80, 350)
    group = nlb.target_group
    assert (group.target_type, group.port, group.preserve_client_ip) == ("instance", 30080, True)
    assert group.targets == ("node-a", "node-b")
    (table,) = topology.node("vpc-router").tables
    assert table.iif == ("eth-node-a", "eth-node-b")
    natgw_link = topology.link_between("vpc-router", "natgw")
    assert natgw_link is not None
    assert (table.routes[0].destination, table.routes[0].gateway) == ("default", natgw_link.end("natgw").address.ip)
    node_a = topology.node("node-a").config
    assert isinstance(node_a, K8sNodeConfig) and node_a.dnat is not None
    assert (node_a.dnat.to, node_a.dnat.port, node_a.dnat.protocols) == ("pod-b", 30080, ("tcp", "udp"))
    text = (tmp_path / "account.toml").read_text()
    for resource in (account.lb_arn, account.tg_arn, account.nat_gateway, *account.instances):
        assert resource in text


def test_export_lab_fixed_variants(endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build_account(endpoint, listener_protocol="TCP", preserve_client_ip=False, nodes_default_route="igw")
    topology, notes = export(endpoint, capsys, tmp_path / "tcp.toml", "--forwarding", "local")
    nlb = topology.node("nlb").config
    assert isinstance(nlb, NlbConfig)
    assert (nlb.protocol, nlb.target_group.preserve_client_ip) == ("TCP", False)
    assert topology.node("vpc-router").tables == ()  # no NAT gateway on the nodes' path
    node_b = topology.node("node-b").config
    assert isinstance(node_b, K8sNodeConfig)
    assert [(s.policy, s.endpoints) for s in node_b.services] == [("Local", ("pod-b",))]
    assert "internet-gateway" in notes and "dropped" in notes  # what the lab does not reproduce, said


def test_export_lab_ip_targets(endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build_account(endpoint, target_type="ip")
    nlb = export(endpoint, capsys, tmp_path / "ip.toml")[0].node("nlb").config
    assert isinstance(nlb, NlbConfig)
    assert (nlb.target_group.target_type, nlb.target_group.targets) == ("ip", ("pod-a", "pod-b"))


def test_export_lab_never_replaces_a_file_unasked(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    build_account(endpoint)
    path = tmp_path / "mine.toml"
    path.write_text("precious\n")
    status, _, err = run_cli(
        ["aws", "export-lab", "--region", REGION, "--endpoint-url", endpoint, "-o", str(path)], capsys
    )
    assert status == 2 and "exists" in err
    assert path.read_text() == "precious\n"


@pytest.mark.lab
@pytest.mark.parametrize(
    ("variant", "forwarding", "tcp", "udp"),
    [
        pytest.param({}, "dnat", "timeout", "re-sourced", id="incident"),
        pytest.param({}, "local", "connected", "answered", id="incident-with-local-policy"),
        pytest.param({"target_type": "ip"}, "dnat", "connected", "answered", id="ip-targets"),
    ],
)
def test_exported_account_behaves_in_the_lab_as_the_check_predicts(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    variant: dict[str, Any], forwarding: str, tcp: str, udp: str,
) -> None:
    """Round trip: the account the check flags, built as a real lab from its export, resets the client's flows."""
    require_root()
    require_tools("ip", "iptables-restore", "iptables-save", "conntrack")
    build_account(endpoint, **variant)
    flagged = bool(check(read_inventory(clients_for(endpoint))))
    topology, _ = export(endpoint, capsys, tmp_path / "account.toml", "--forwarding", forwarding)
    with Lab(topology) as lab:
        address, port = topology.service
        tcp_result = lab.call("client", functools.partial(tcp_probe, address, port, 2.0))
        udp_result = lab.call("client", functools.partial(udp_probe, address, port, 2.0))
        resets = sum(
            c["packets"] for c in lab.state("natgw")["counters"]
            if c["chain"] == "NATGW-NO-STATE" and "REJECT" in c["rule"]
        )
    assert (tcp_result.outcome, udp_result.outcome) == (tcp, udp)
    assert (resets > 0) == (tcp == "timeout")
    # The check flags the account whenever forwarding can send replies past the NLB.
    assert flagged == (variant.get("target_type", "instance") == "instance")
