"""``diag aws``: read an account, judge it, export it, against moto running as a real HTTP server.

The server starts once per test session on a free loopback port; each test
resets it and builds the account it needs. Credentials are fake and set in the
test's own environment; nothing here can reach AWS.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from diag.aws.findings import check
from diag.aws.inventory import read_inventory
from diag.aws.session import AwsClients, connect

REGION = "eu-west-1"
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty account and fake credentials in this test's environment only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request).close()
    return moto_endpoint


def client(endpoint: str, service: str) -> Any:
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
    reservation = ec2.run_instances(ImageId="ami-03cf127a", MinCount=2, MaxCount=2, SubnetId=private_subnet)
    instances = [i["InstanceId"] for i in reservation["Instances"]]
    lb = elbv2.create_load_balancer(
        Name=name, Subnets=[public_subnet], Type="network", Scheme="internet-facing"
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


def clients_for(endpoint: str) -> AwsClients:
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
