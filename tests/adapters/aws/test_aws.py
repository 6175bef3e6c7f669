"""The EC2 adapter against a real moto server in its own process (regions, roles, failures)."""

import json
import logging
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from adapters.aws import AwsAdapter, AwsConfig
from adapters.base import AuthError, Capacity, ConfigError, Observation, UnreachableError

OTHER_ROLE = "arn:aws:iam::222222222222:role/tr7-metering"


def adapter(moto: Any, **kw: Any) -> AwsAdapter:
    kw.setdefault("regions", ["eu-west-1", "us-east-1"])
    kw.setdefault("endpoint_url", moto.url)
    return AwsAdapter(AwsConfig(name="aws-test", platform="aws", timeout=60, **kw))


def by_vm(result: Any) -> dict[str, Observation]:
    return {o.vm: o for o in result.observations}


def test_tagged_instances_in_two_regions(moto: Any) -> None:
    eu, us = moto.ec2("eu-west-1"), moto.ec2("us-east-1")
    a, b = moto.launch(eu, 2, {"tr7.instance": "fw-a", "tr7.bundle": "pro", "tr7.bandwidth_mbps": "500",
                                "tr7.vservices": "8", "Name": "edge"})
    moto.launch(eu, 3)  # untagged: not ours
    moto.launch(eu, 1, {"owner": "tr7.instance"})  # the tag key matters, not a value
    [c] = moto.launch(us, 1, {"tr7.instance": "fw-c"})

    result = adapter(moto).poll()

    assert result.error is None
    assert by_vm(result) == {
        a: Observation("fw-a", a, "eu-west-1/eu-west-1a", "running", Capacity("pro", 500, 8)),
        b: Observation("fw-a", b, "eu-west-1/eu-west-1a", "running", Capacity("pro", 500, 8)),
        c: Observation("fw-c", c, "us-east-1/us-east-1a", "running", None),
    }


def test_stop_start_terminate_between_polls(moto: Any) -> None:
    eu = moto.ec2("eu-west-1")
    keep, stop, kill = moto.launch(eu, 3, {"tr7.instance": "fw-1"})
    ad = adapter(moto, regions=["eu-west-1"])
    assert {o.state for o in ad.poll().observations} == {"running"}

    eu.stop_instances(InstanceIds=[stop])
    eu.terminate_instances(InstanceIds=[kill])
    states = {vm: o.state for vm, o in by_vm(ad.poll()).items()}
    assert states == {keep: "running", stop: "stopped", kill: "stopped"}

    eu.start_instances(InstanceIds=[stop])
    ad.close()  # the agent's reload: the next poll builds new clients
    states = {vm: o.state for vm, o in by_vm(ad.poll()).items()}
    assert states == {keep: "running", stop: "running", kill: "stopped"}


def test_all_enabled_regions(moto: Any) -> None:
    [far] = moto.launch(moto.ec2("ap-southeast-2"), 1, {"tr7.instance": "fw-far"})
    [near] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-near"})
    result = adapter(moto, regions="all").poll()
    assert result.error is None
    assert {vm: o.host for vm, o in by_vm(result).items()} == {
        far: "ap-southeast-2/ap-southeast-2a", near: "eu-west-1/eu-west-1a"}


def test_assumed_role_meters_the_other_account(moto: Any) -> None:
    [own] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-own"})
    other = moto.ec2("eu-west-1", moto.assume(OTHER_ROLE))
    [theirs] = moto.launch(other, 1, {"tr7.instance": "fw-theirs"})

    assert set(by_vm(adapter(moto).poll())) == {own}
    assumed = adapter(moto, role_arn=OTHER_ROLE, external_id="msp-42")
    assert set(by_vm(assumed.poll())) == {theirs}
    # what STS was asked: the role, the ExternalId its trust policy checks, a recognisable session
    sessions = [r for r in moto.data()["sts"]["AssumedRole"] if r["session_name"] == "tr7-aws-test"]
    assert [(r["role_arn"], r["external_id"]) for r in sessions] == [(OTHER_ROLE, "msp-42")]


def test_debug_logging_never_writes_the_assumed_roles_secret(moto: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TR7_LOG_LEVEL=DEBUG (docs/agent.md, troubleshooting) set every logger to DEBUG, and botocore
    logged the sts:AssumeRole answer: the role's SecretAccessKey and SessionToken in the journal.
    Found by a review."""
    import io

    from agent import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sdk_levels = {n: logging.getLogger(n).level for n in logging.root.manager.loggerDict}
    monkeypatch.setenv("TR7_LOG_LEVEL", "DEBUG")
    try:
        logs.setup()
        out = io.StringIO()
        root.handlers[0].stream = out  # type: ignore[attr-defined]
        ad = adapter(moto, role_arn=OTHER_ROLE, regions=["eu-west-1"])
        assert ad.poll().error is None
        creds = ad.session().get_credentials().get_frozen_credentials()
        logging.getLogger("tr7.agent").debug("event=probe")  # the agent's own DEBUG lines still show
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in logging.root.manager.loggerDict:  # those made since too: back to NOTSET
            logging.getLogger(name).setLevel(sdk_levels.get(name, logging.NOTSET))
    text = out.getvalue()
    assert "event=probe" in text
    assert creds.secret_key not in text and creds.token not in text


def test_assumed_role_credentials_are_refreshed_before_expiry(moto: Any) -> None:
    moto.launch(moto.ec2("eu-west-1", moto.assume(OTHER_ROLE)), 1, {"tr7.instance": "fw-theirs"})
    ad = adapter(moto, role_arn=OTHER_ROLE, regions=["eu-west-1"])
    assert len(ad.poll().observations) == 1
    creds = ad.session().get_credentials()
    first = creds.get_frozen_credentials().access_key
    # five minutes left: inside botocore's mandatory refresh window, so the role is assumed again
    creds._expiry_time = datetime.now(UTC) + timedelta(minutes=5)
    assert len(ad.poll().observations) == 1
    assert creds.get_frozen_credentials().access_key != first
    assert creds.method == "tr7-assume-role"


def _metering_user(moto: Any) -> Any:
    """moto's IAM with the user `meter` holding the least-privilege policy of docs/adapters/aws.md
    (enforced by moto once auth is on); returns the IAM client."""
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.url)
    iam.create_user(UserName="meter")
    iam.put_user_policy(UserName="meter", PolicyName="tr7-metering", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstances", "ec2:DescribeRegions"],
                       "Resource": "*"}]}))
    return iam


def test_named_profile_is_used(moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iam = _metering_user(moto)
    key = iam.create_access_key(UserName="meter")["AccessKey"]
    iam.create_user(UserName="nobody")  # no policy at all
    none = iam.create_access_key(UserName="nobody")["AccessKey"]
    Path(tmp_path / "credentials").write_text(
        f"[metering]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n"
        f"[nobody]\naws_access_key_id = {none['AccessKeyId']}\n"
        f"aws_secret_access_key = {none['SecretAccessKey']}\n")
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-p"})
    moto.require_auth(True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAAAAAAAAAAAAAAAAA")  # unknown to moto's IAM

    assert set(by_vm(adapter(moto, profile="metering").poll())) == {vm}
    assert set(by_vm(adapter(moto, profile="metering", regions="all").poll())) == {vm}
    with pytest.raises(AuthError, match=r"not authorized|AccessDenied|Unauthorized"):
        adapter(moto, profile="nobody").poll()
    with pytest.raises(AuthError, match="AuthFailure"):
        adapter(moto).poll()
    with pytest.raises(ConfigError, match="nope"):
        adapter(moto, profile="nope").poll()


def test_a_rotated_access_key_is_read_again_after_a_failed_poll(
    moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new key in the shared credentials file and the old one deleted: the session kept the old
    key, and every poll failed (AuthFailure) until the agent was reloaded."""
    iam = _metering_user(moto)
    creds = tmp_path / "credentials"

    def write(key: dict[str, str]) -> None:
        creds.write_text(f"[metering]\naws_access_key_id = {key['AccessKeyId']}\n"
                         f"aws_secret_access_key = {key['SecretAccessKey']}\n")

    old = iam.create_access_key(UserName="meter")["AccessKey"]
    write(old)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-r"})
    moto.require_auth(True)
    ad = adapter(moto, profile="metering", regions=["eu-west-1"])
    assert set(by_vm(ad.poll())) == {vm}
    moto.require_auth(False)  # the operator's rotation, with their own rights
    new = iam.create_access_key(UserName="meter")["AccessKey"]
    iam.delete_access_key(UserName="meter", AccessKeyId=old["AccessKeyId"])
    write(new)
    moto.require_auth(True)
    with pytest.raises(AuthError):  # the key it had, refused: the whole poll fails alike
        ad.poll()
    assert set(by_vm(ad.poll())) == {vm}  # the file read again


def test_bad_credentials_fail_the_whole_poll_with_a_clear_reason(moto: Any) -> None:
    moto.require_auth(True)
    with pytest.raises(AuthError) as err:
        adapter(moto).poll()
    assert "AuthFailure" in err.value.reason and "region" not in err.value.reason
    with pytest.raises(AuthError, match=r"sts:AssumeRole arn:aws:iam::222222222222:role/tr7-metering"):
        adapter(moto, role_arn=OTHER_ROLE).poll()


def test_no_credentials_at_all(moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError, match="no AWS credentials"):
        adapter(moto).poll()


def test_unreachable_endpoint(moto: Any, closed_port: int) -> None:
    with pytest.raises(UnreachableError, match="unreachable"):
        adapter(moto, endpoint_url=f"http://127.0.0.1:{closed_port}", regions=["eu-west-1"]).poll()


def test_a_failing_region_keeps_the_others(moto: Any) -> None:
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-ok"})
    # moto has no backend for this region and answers HTTP 500 to every call in it
    result = adapter(moto, regions=["eu-west-1", "xx-fail-1"]).poll()
    assert set(by_vm(result)) == {vm}
    assert result.error is not None and result.error.startswith("region xx-fail-1: ")
    assert "eu-west-1" not in result.error


def test_malformed_tags_are_logged_once(moto: Any, caplog: pytest.LogCaptureFixture) -> None:
    eu = moto.ec2("eu-west-1")
    [bad] = moto.launch(eu, 1, {"tr7.instance": "not a valid id!"})
    [odd] = moto.launch(eu, 1, {"tr7.instance": "fw-odd", "tr7.bandwidth_mbps": "fast",
                                "tr7.vservices": "4"})
    ad = adapter(moto, regions=["eu-west-1"])
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        first, second = ad.poll(), ad.poll()
    assert by_vm(first) == by_vm(second) == {
        odd: Observation("fw-odd", odd, "eu-west-1/eu-west-1a", "running", Capacity(vservices=4))}
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if bad in w]) == 1
    assert len([w for w in warnings if odd in w and "tr7.bandwidth_mbps" in w]) == 1


def test_states_of_every_ec2_lifecycle_step(moto: Any) -> None:
    ad = adapter(moto)
    inst = {"InstanceId": "i-0abc", "Tags": [{"Key": "tr7.instance", "Value": "fw"}],
            "Placement": {"AvailabilityZone": "eu-west-1b"}}
    got = {s: ad.observe("eu-west-1", {**inst, "State": {"Name": s}}).state  # type: ignore[union-attr]
           for s in ("pending", "running", "stopping", "stopped", "shutting-down", "terminated", "new")}
    assert got == {"pending": "unknown", "running": "running", "stopping": "stopped", "stopped": "stopped",
                   "shutting-down": "stopped", "terminated": "stopped", "new": "unknown"}


def test_config_schema() -> None:
    ok = AwsConfig(name="a", platform="aws", regions="all", role_arn=OTHER_ROLE, external_id="x1")
    assert ok.regions == "all"
    for bad in ({"regions": []}, {"regions": "some"}, {"regions": ["eu-west-1"], "external_id": "x1"},
                {"regions": ["eu-west-1"], "role_arn": "tr7-metering"},
                {"regions": ["eu-west-1"], "secret_key": "x"}, {"regions": ["eu-west1"]},
                {"regions": ["EU-WEST-1"]}, {"regions": ["eu-west-1\n"]}):
        with pytest.raises(ValidationError):
            AwsConfig(name="a", platform="aws", **bad)
    # a typo failed every poll with botocore's raw InvalidRegionError; a repeat signed each twice
    twice = AwsConfig(name="a", platform="aws", regions=["eu-west-1", "us-gov-west-1", "eu-west-1"])
    assert twice.regions == ["eu-west-1", "us-gov-west-1"]
    assert all(f.description for f in AwsConfig.model_fields.values())
    # every call goes to endpoint_url: an AWS endpoint serves EC2 of one region, never STS
    vpce = "https://vpce-0abc-xyz.ec2.eu-west-1.vpce.amazonaws.com"
    AwsConfig(name="a", platform="aws", regions=["eu-west-1"], endpoint_url=vpce)
    for bad in ({"regions": "all"}, {"regions": ["eu-west-1", "us-east-1"]},
                {"regions": ["eu-west-1"], "role_arn": OTHER_ROLE}):
        with pytest.raises(ValidationError, match="serves EC2 of one region"):
            AwsConfig(name="a", platform="aws", endpoint_url=vpce, **bad)
    AwsConfig(name="a", platform="aws", regions="all", role_arn=OTHER_ROLE, endpoint_url="http://127.0.0.1:5000")


def test_a_throttled_region_is_reported_not_waited_for(moto: Any, throttle_proxy: Any) -> None:
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-ok"})
    throttle_proxy.throttle.add("us-east-1")
    result = adapter(moto, endpoint_url=throttle_proxy.url).poll()
    assert set(by_vm(result)) == {vm}
    assert result.error is not None
    assert result.error.startswith("region us-east-1: EC2 throttled (RequestLimitExceeded)")
    assert throttle_proxy.throttled_requests == 5  # the SDK retried (adaptive mode) before giving up


def test_a_region_throttled_past_the_timeout_does_not_stall_the_poll(moto: Any, throttle_proxy: Any) -> None:
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-ok"})
    throttle_proxy.throttle.add("us-east-1")
    # every throttled answer makes the SDK back off (7.5 s on average for 5 attempts): with a 5 s
    # budget the region is most likely still retrying, though it may also have given up already
    ad = AwsAdapter(AwsConfig(name="aws-test", platform="aws", timeout=5, endpoint_url=throttle_proxy.url,
                              regions=["eu-west-1", "us-east-1"]))
    result = ad.poll()
    assert set(by_vm(result)) == {vm}
    prefix = "region us-east-1: EC2 throttled (RequestLimitExceeded)"
    assert result.error in (f"{prefix}, still retrying at the 5s poll timeout",
                            f"{prefix} after 5 attempts")


def test_documented_sample_tables_are_valid() -> None:
    doc = (Path(__file__).parents[3] / "docs/adapters/aws.md").read_text()
    tables = [t for block in re.findall(r"```toml\n(.*?)```", doc, re.S)
              for t in tomllib.loads(block)["adapters"]]
    assert len(tables) == 2
    for table in tables:
        AwsConfig.model_validate(table)


def test_all_regions_are_listed_from_the_configured_home_region(moto: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").write_text("[profile gov]\nregion = us-gov-west-1\n")
    (tmp_path / "credentials").write_text(
        "[gov]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = x\n")
    [vm] = moto.launch(moto.ec2("us-gov-west-1"), 1, {"tr7.instance": "fw-gov"})
    seen: list[str] = []
    ad = adapter(moto, profile="gov", regions="all")
    ad.client("us-gov-west-1").meta.events.register(
        "before-send.ec2.DescribeRegions", lambda request, **_: seen.append(request.url))
    assert set(by_vm(ad.poll())) == {vm}
    assert len(seen) == 1  # DescribeRegions went to the profile's region, not us-east-1


def test_through_the_agents_config_and_poller(moto: Any, tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.poller import Poller

    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-agent", "tr7.vservices": "2"})
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n\n'
                    f'[[adapters]]\nname = "aws-eu"\nplatform = "aws"\nregions = ["eu-west-1"]\n'
                    f'endpoint_url = "{moto.url}"\n\n'
                    f'[[adapters]]\nname = "aws-half"\nplatform = "aws"\n'
                    f'regions = ["eu-west-1", "xx-fail-1"]\n'
                    f'endpoint_url = "{moto.url}"\n')
    poller = Poller(load_config(conf).adapters)
    try:
        outcome = poller.poll_all()
    finally:
        poller.close()
    assert outcome.polls[0] == {"adapter": "aws-eu", "platform": "aws", "ok": True, "error": None}
    assert outcome.polls[1]["ok"] is False and outcome.polls[1]["error"].startswith("region xx-fail-1: ")
    wire = {"instance": "fw-agent", "vm": vm, "host": "eu-west-1/eu-west-1a", "state": "running",
            "capacity": {"vservices": 2}}
    assert outcome.observations == [{**wire, "adapter": "aws-eu"}, {**wire, "adapter": "aws-half"}]


def test_a_silent_endpoint_ends_the_set_up_within_the_timeout(moto: Any) -> None:
    # DescribeRegions ("all") and the role's sts:AssumeRole came before the regions' deadline and
    # retried on their own: a poll against a frozen endpoint ran ~5x its timeout
    import socket
    import time

    from adapters.base import UnreachableError

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for extra in ({"regions": "all"}, {"role_arn": OTHER_ROLE}):
            t0 = time.monotonic()
            with pytest.raises(UnreachableError, match="no answer within the poll timeout"):
                AwsAdapter(AwsConfig(name="aws-test", platform="aws", timeout=2, endpoint_url=url,
                                     **{"regions": ["eu-west-1"], **extra})).poll()
            assert time.monotonic() - t0 < 2.5, extra


def test_an_opt_in_region_listed_first_fails_alone_with_a_role(moto: Any, throttle_proxy: Any) -> None:
    """STS was asked in the first listed region: one not enabled (RegionDisabledException) failed
    the whole poll, where listed second it failed only itself, as the docs say."""
    other = moto.ec2("eu-west-1", moto.assume(OTHER_ROLE))
    [theirs] = moto.launch(other, 1, {"tr7.instance": "fw-theirs"})
    throttle_proxy.disabled.add("ap-east-1")
    result = adapter(moto, role_arn=OTHER_ROLE, regions=["ap-east-1", "eu-west-1"],
                     endpoint_url=throttle_proxy.url).poll()
    assert set(by_vm(result)) == {theirs}
    assert (result.error or "").startswith("region ap-east-1: EC2 AuthFailure")


def test_an_endpoint_dripping_its_answers_is_cut_off_at_the_timeout(moto: Any) -> None:
    """botocore's read_timeout bounds each read, not the answer: the regions' calls are bounded by the
    poll's deadline (fanout.poll_scopes), and the next poll works once the endpoint is well."""
    import time

    from adapters.base import UnreachableError
    from tests._dripproxy import DripProxy
    [vm] = moto.launch(moto.ec2("eu-west-1"), 1, {"tr7.instance": "fw-drip"})
    proxy = DripProxy.tcp(moto.url, pause=0.05, trigger=b"DescribeInstances")
    try:
        ad = AwsAdapter(AwsConfig(name="aws-test", platform="aws", timeout=2, regions=["eu-west-1"],
                                  endpoint_url=proxy.url))
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="EC2 gave no answer within the 2s poll timeout"):
            ad.poll()
        assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
        proxy.calm.set()
        assert set(by_vm(ad.poll())) == {vm}
    finally:
        proxy.calm.set()
        proxy.close()
