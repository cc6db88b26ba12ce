"""Connecting to AWS: the standard credential chain, and botocore's errors as one clear line.

Everything here is the thin I/O edge of ``diag aws``; reading and judging the
account happen in ``inventory`` and ``findings``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from diag.errors import DiagError

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_logs import CloudWatchLogsClient

# IAM action prefix of every API operation diag calls, so an access-denied error
# can name the exact permission the user lacks.
IAM_PREFIX_BY_OPERATION: dict[str, str] = {
    "DescribeLoadBalancers": "elasticloadbalancing",
    "DescribeListeners": "elasticloadbalancing",
    "DescribeListenerAttributes": "elasticloadbalancing",
    "DescribeTargetGroups": "elasticloadbalancing",
    "DescribeTargetGroupAttributes": "elasticloadbalancing",
    "DescribeTargetHealth": "elasticloadbalancing",
    "DescribeInstances": "ec2",
    "DescribeSubnets": "ec2",
    "DescribeRouteTables": "ec2",
    "DescribeNatGateways": "ec2",
    "DescribeVpcs": "ec2",
    "GetMetricData": "cloudwatch",
    "FilterLogEvents": "logs",
}

ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess", "Forbidden"}
)
BAD_CREDENTIAL_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
# Codes a service returns for an operation it does not implement (older API
# versions, partitions without the feature, emulators).
UNSUPPORTED_OPERATION_CODES = frozenset({"InvalidAction", "UnknownOperation", "NotImplemented", "UnsupportedOperation"})

_ACTION_IN_MESSAGE = re.compile(r"perform:\s*([a-z0-9-]+:[A-Za-z0-9]+)")


@dataclass(frozen=True)
class AwsClients:
    """The four service clients ``diag aws`` needs, sharing one session."""

    region: str
    elbv2: ElasticLoadBalancingv2Client
    ec2: EC2Client
    cloudwatch: CloudWatchClient
    logs: CloudWatchLogsClient


def connect(profile: str | None = None, region: str | None = None, endpoint_url: str | None = None) -> AwsClients:
    """Clients from the standard credential chain (environment, profile, SSO, instance role).

    ``endpoint_url`` points every client at one endpoint (an emulator in
    tests, a VPC endpoint proxy); without it, each service's regional endpoint.
    """
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound as error:
        raise DiagError(f"AWS profile {profile!r} not found in the AWS config or credentials files") from error
    resolved_region = session.region_name
    if not resolved_region:
        raise DiagError("no AWS region: give --region or set AWS_REGION (or a region in the profile)")
    if endpoint_url is None and not _known_region(session, resolved_region):
        raise DiagError(f"unknown AWS region {resolved_region!r}")
    if session.get_credentials() is None:
        raise DiagError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile, "
            "or run where an instance role is available"
        )
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5}, user_agent_extra="diag")

    where: dict[str, Any] = {"region_name": resolved_region, "endpoint_url": endpoint_url, "config": config}
    return AwsClients(
        region=resolved_region,
        elbv2=session.client("elbv2", **where),
        ec2=session.client("ec2", **where),
        cloudwatch=session.client("cloudwatch", **where),
        logs=session.client("logs", **where),
    )


def _known_region(session: boto3.Session, region: str) -> bool:
    for partition in session.get_available_partitions():
        if region in session.get_available_regions("ec2", partition_name=partition, allow_non_regional=False):
            return True
    return False


def is_unsupported_operation(error: botocore.exceptions.ClientError) -> bool:
    """The service does not know this operation (an older API, an emulator): not the user's fault."""
    return error.response.get("Error", {}).get("Code", "") in UNSUPPORTED_OPERATION_CODES


def is_access_denied(error: botocore.exceptions.ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    if code in ACCESS_DENIED_CODES:
        return True
    # An error body the client could not parse leaves only the HTTP status as the code; 403 that is not a
    # credentials problem is a refused permission.
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code == "403" or (status == 403 and code not in BAD_CREDENTIAL_CODES)


def translate(error: Exception) -> DiagError:
    """One line for the user from a botocore error, naming what is missing."""
    if isinstance(error, botocore.exceptions.ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "")
        message = " ".join(details.get("Message", "").split())
        operation = error.operation_name
        if code in BAD_CREDENTIAL_CODES:
            return DiagError(f"AWS rejected the credentials ({code}) on {operation}: {message}".rstrip(": "))
        if is_access_denied(error):
            return DiagError(f"access denied: the credentials lack permission {_iam_action(operation, message)}")
        return DiagError(f"AWS error on {operation}: {code}: {message}".rstrip(": "))
    if isinstance(error, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return DiagError(f"no usable AWS credentials: {error}")
    if isinstance(error, botocore.exceptions.NoRegionError):
        return DiagError("no AWS region: give --region or set AWS_REGION")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return DiagError(f"cannot reach the AWS endpoint ({error})")
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return DiagError(f"AWS client error: {error}")
    return DiagError(str(error))


def _iam_action(operation: str, message: str) -> str:
    """The IAM action: ours for the operations diag calls (each is its own action), else what AWS's message says."""
    prefix = IAM_PREFIX_BY_OPERATION.get(operation)
    if prefix:
        return f"{prefix}:{operation}"
    in_message = _ACTION_IN_MESSAGE.search(message)
    return in_message.group(1) if in_message else operation


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn any botocore error raised inside the block into a ``DiagError``."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise translate(error) from error
