"""AWS EC2 adapter: TR7 instances are EC2 instances tagged `tr7.instance`, polled per region."""

import re
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError
from pydantic import Field, field_validator, model_validator

from adapters.base import (
    Adapter,
    AdapterConfig,
    AdapterError,
    AuthError,
    ConfigError,
    Observation,
    PollResult,
    ThrottledError,
    UnreachableError,
)
from adapters.fanout import SetupLock, Turns, forgetting, poll_deadline, poll_scopes, within
from adapters.tr7meta import ProblemLog, recognise

# EC2 state -> heartbeat state. Only a settled `running` is billed; see docs/adapters/aws.md.
STATES = {
    "running": "running",
    "pending": "unknown",  # booting: not serving yet, and EC2 does not bill it either
    "stopping": "stopped",
    "stopped": "stopped",
    "shutting-down": "stopped",
    "terminated": "stopped",  # listed for ~1 h after termination: evidence it is not running
}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
              "AccessDenied", "AccessDeniedException", "ExpiredToken", "RequestExpired",
              "InvalidAccessKeyId", "OptInRequired", "UnrecognizedClientException"}
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
                  "RequestThrottled", "SlowDown"}
MAX_ATTEMPTS = 5
PAGE_SIZE = 1000  # the largest page EC2 allows: 5,000 instances in 5 requests per region
TAG_FILTER = [{"Name": "tag-key", "Values": ["tr7.instance"]}]
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+\Z")  # eu-west-1, us-gov-west-1, ap-southeast-3


class AwsConfig(AdapterConfig):
    regions: list[str] | Literal["all"] = Field(
        min_length=1,
        description='Regions to poll, e.g. ["eu-west-1", "us-east-1"], or "all" for every region\n'
                    "enabled in the account (ec2:DescribeRegions at each poll)")
    profile: str | None = Field(
        default=None,
        description="Named profile of ~/.aws/credentials or ~/.aws/config; unset = the standard\n"
                    "chain (environment, shared files, instance or container role)")
    role_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
        description="Role to assume with sts:AssumeRole, e.g. arn:aws:iam::123456789012:role/tr7-metering\n"
                    "(meters another account); re-assumed before its credentials expire")
    external_id: str | None = Field(
        default=None, min_length=2, max_length=1224,
        description="ExternalId the role's trust policy requires, if any")
    endpoint_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="One endpoint for every call instead of AWS's regional ones: EC2 of every\n"
                    "listed region and STS (a test server; or the EC2 VPC endpoint of the one\n"
                    "region listed, without role_arn, when its private DNS is off)")

    @field_validator("regions")
    @classmethod
    def _region_names(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str):
            return v
        # A typo (eu-west1) raised botocore's InvalidRegionError at every poll, outside the
        # conversion of vendor errors, and lost the valid regions' instances with it.
        bad = [r for r in v if not _REGION_RE.match(r)]
        if bad:
            raise ValueError(f"not an AWS region name such as eu-west-1: {', '.join(map(repr, bad))}")
        return list(dict.fromkeys(v))  # a region listed twice is polled once (each instance once)

    @model_validator(mode="after")
    def _external_id_needs_role(self) -> "AwsConfig":
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id is only used with role_arn")
        host = (urlsplit(self.endpoint_url).hostname or "") if self.endpoint_url else ""
        if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) and (
            not isinstance(self.regions, list) or len(self.regions) != 1 or self.role_arn is not None
        ):
            # every call goes to endpoint_url: an AWS endpoint (a VPC interface endpoint) serves
            # one service in one region, so other regions' calls and STS's AssumeRole failed there
            raise ValueError("an AWS endpoint_url serves EC2 of one region: list only that region, "
                             "without role_arn (or leave endpoint_url unset)")
        return self


class _AssumeRoleProvider(CredentialProvider):
    """Credentials of an assumed role, fetched lazily and re-fetched before they expire."""

    METHOD = "tr7-assume-role"
    CANONICAL_NAME = "tr7-assume-role"

    def __init__(self, fetch: Any) -> None:
        super().__init__()
        self._fetch = fetch

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(refresh_using=self._fetch, method=self.METHOD)


def convert(exc: Exception, what: str = "EC2") -> AdapterError:
    """A botocore exception as the AdapterError the agent reports (vendor types stop here)."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, msg = err.get("Code", "?"), err.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = f"{what} {code}: {msg}".strip().rstrip(":")
        if code in AUTH_CODES or status in (401, 403):
            return AuthError(reason, str(exc))
        if code in THROTTLE_CODES or status == 429:
            attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            return ThrottledError(f"{what} throttled ({code}) after {attempts + 1} attempts", str(exc))
        return AdapterError(reason, str(exc))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AuthError(f"no usable AWS credentials: {exc}")
    if isinstance(exc, ProfileNotFound):
        return ConfigError(str(exc))
    if isinstance(exc, CredentialRetrievalError):
        return AuthError(str(exc))
    if isinstance(exc, BotoConnectionError):
        return UnreachableError(f"{what} endpoint unreachable: {exc}", repr(exc))
    if isinstance(exc, ResponseParserError):
        return AdapterError(f"{what}: the endpoint's answer is not an EC2 response (server error?)", str(exc))
    if isinstance(exc, BotoCoreError):
        return AdapterError(f"{what}: {exc}"[:300], repr(exc))
    return AdapterError(f"{what}: unexpected {type(exc).__name__}: {exc}"[:300], repr(exc))


class AwsAdapter(Adapter):
    platform: ClassVar[str] = "aws"
    Config: ClassVar[type[AdapterConfig]] = AwsConfig
    config: AwsConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self._setup_lock = SetupLock()  # one poll's set-up at a time (fanout.within)
        self._turns = Turns()  # the scopes a late poll never asked go first next time
        self.boto_config = BotoConfig(
            retries={"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=min(10.0, self.config.timeout),
            read_timeout=self.config.timeout,  # a 1,000-instance page can be slow; the deadline bounds it
            max_pool_connections=4,
            user_agent_extra="tr7-agent",
        )
        self._clients: dict[str, Any] = {}
        self._session: boto3.Session | None = None
        self._throttled: dict[str, str] = {}  # region -> last throttling code seen by a retry

    # -- sessions and clients (created in the polling thread: boto3 sessions are not thread-safe)

    def _home_region(self) -> str:
        """Where STS and DescribeRegions are called: the first listed region, else the profile's or
        AWS_REGION's (GovCloud and China accounts need theirs), else us-east-1."""
        regions = self.config.regions
        if isinstance(regions, list):
            return regions[0]
        return self._source_session().region_name or "us-east-1"

    def _source_session(self) -> boto3.Session:
        try:
            return boto3.Session(profile_name=self.config.profile)
        except ProfileNotFound as exc:
            raise ConfigError(f"AWS profile {self.config.profile!r} not found") from exc

    def session(self) -> boto3.Session:
        if self._session is None:
            source = self._source_session()
            if self.config.role_arn is None:
                self._session = source
            else:
                # STS in the home region, else in the next listed one: an opt-in region not
                # enabled answers RegionDisabledException, and listed first it failed every region
                homes = list(dict.fromkeys([self._home_region(), *self.regions_listed()]))
                clients = [source.client("sts", region_name=r, endpoint_url=self.config.endpoint_url,
                                         config=self.boto_config) for r in homes]
                core = botocore.session.Session()
                core.get_component("credential_provider").insert_before(
                    "env", _AssumeRoleProvider(lambda: self._assume(clients)))
                self._session = boto3.Session(botocore_session=core)
        return self._session

    def regions_listed(self) -> list[str]:
        return list(self.config.regions) if isinstance(self.config.regions, list) else []

    def _assume(self, clients: list[Any]) -> dict[str, str]:
        session_name = re.sub(r"[^\w+=,.@-]", "-", f"tr7-{self.name}", flags=re.ASCII)[:64]
        args: dict[str, Any] = {"RoleArn": self.config.role_arn, "DurationSeconds": 3600,
                                "RoleSessionName": session_name}
        if self.config.external_id:
            args["ExternalId"] = self.config.external_id
        for i, sts in enumerate(clients):
            try:
                creds = sts.assume_role(**args)["Credentials"]
                break
            except ClientError as exc:
                disabled = exc.response.get("Error", {}).get("Code") == "RegionDisabledException"
                if disabled and i + 1 < len(clients):
                    continue
                raise convert(exc, f"sts:AssumeRole {self.config.role_arn}") from exc
            except BotoCoreError as exc:
                raise convert(exc, f"sts:AssumeRole {self.config.role_arn}") from exc
        expiry: datetime = creds["Expiration"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": expiry.isoformat()}

    def client(self, region: str) -> Any:
        if region not in self._clients:
            client = self.session().client(
                "ec2", region_name=region, endpoint_url=self.config.endpoint_url, config=self.boto_config)
            client.meta.events.register("needs-retry.ec2.*", self._retry_hook(region))
            self._clients[region] = client
        return self._clients[region]

    def _retry_hook(self, region: str) -> Any:
        """Remember that a region is being throttled, to say so if it is still retrying at the deadline."""
        def hook(response: Any = None, **_: Any) -> None:
            code = response[1].get("Error", {}).get("Code") if response else None
            if code in THROTTLE_CODES:
                self._throttled[region] = code
        return hook

    def regions(self) -> list[str]:
        if isinstance(self.config.regions, list):
            return list(self.config.regions)
        try:
            answer = self.client(self._home_region()).describe_regions()
        except (ClientError, BotoCoreError) as exc:
            raise convert(exc, "ec2:DescribeRegions") from exc
        return sorted(r["RegionName"] for r in answer["Regions"])

    # -- polling

    def poll_region(self, region: str) -> list[Observation]:
        # this call's throttling from now on; a call of an earlier poll still retrying keeps its
        # entry (fanout.poll_scopes does not ask its scope again, and says it is throttled)
        self._throttled.pop(region, None)
        out = []
        pages = self.client(region).get_paginator("describe_instances").paginate(
            Filters=TAG_FILTER, PaginationConfig={"PageSize": PAGE_SIZE})
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    obs = self.observe(region, inst)
                    if obs is not None:
                        out.append(obs)
        return out

    def observe(self, region: str, inst: dict[str, Any]) -> Observation | None:
        vm = inst["InstanceId"]
        tags = {t["Key"]: t.get("Value", "") for t in inst.get("Tags", [])}
        found = recognise(tags, vm, self.problems)
        if found is None:
            return None
        instance, capacity = found
        zone = inst.get("Placement", {}).get("AvailabilityZone")
        state = STATES.get(inst.get("State", {}).get("Name", ""), "unknown")
        return Observation(instance=instance, vm=vm, host=f"{region}/{zone}" if zone else region,
                           state=state, capacity=capacity)

    def _set_up(self) -> list[str]:
        """Credentials, the regions, and their clients, made in one thread (creating clients from
        one session is not thread-safe)."""
        self._credentials_ready()
        regions = self.regions()
        try:
            for region in regions:
                self.client(region)
        except (ClientError, BotoCoreError) as exc:
            raise convert(exc, "EC2 client") from exc
        return regions

    def _credentials_ready(self) -> None:
        """Resolve (or assume) credentials once up front: a refusal there fails every region alike."""
        try:
            creds = self.session().get_credentials()
            if creds is None:
                raise AuthError("no AWS credentials found (environment, shared files, instance role)")
            creds.get_frozen_credentials()
        except (ClientError, BotoCoreError) as exc:
            raise convert(exc, "credentials") from exc

    def poll(self) -> PollResult:
        return forgetting(self._poll, self._forget)  # credentials read again after a failed poll

    def _forget(self) -> None:
        # not closed: a late region's thread may still be paging with its client (closed when
        # collected); the next set-up makes new ones in its own thread
        self._clients = {}
        self._session = None

    def _poll(self) -> PollResult:
        # the agent abandons a poll at `timeout`: answer before it, with the late regions named
        deadline = poll_deadline(self.config.timeout)
        regions = within(deadline, self._set_up, what="AWS credentials and regions", lock=self._setup_lock,
                         thread_name=f"aws-{self.name}-setup")
        if not regions:  # "all" in an account where DescribeRegions lists none
            return PollResult()
        limit = f"the {self.config.timeout:g}s poll timeout"

        def late(region: str) -> AdapterError:
            if region in self._throttled:
                return ThrottledError(f"EC2 throttled ({self._throttled[region]}), still retrying at {limit}")
            return UnreachableError(f"EC2 gave no answer within {limit}")

        return poll_scopes(regions, self.poll_region, label="region", deadline=deadline, workers=16,
                           thread_name=f"aws-{self.name}", convert=convert, late=late, turns=self._turns)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._session = None


ADAPTER = AwsAdapter
