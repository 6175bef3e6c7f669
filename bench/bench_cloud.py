"""Cloud adapters at MSP scale: one poll of 5,000 EC2 instances (moto_server) and 5,000 Azure VMs.

Run: .venv/bin/python bench/bench_cloud.py [--instances 5000]
Prints seconds per poll, HTTP requests made, and instances per request. Test servers run locally,
so the times measure the adapter + SDK + server work, not cloud latency (see docs/adapters/*.md).
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.aws import AwsAdapter, AwsConfig  # noqa: E402
from adapters.azure import AzureAdapter, AzureConfig  # noqa: E402

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-2"]
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
KEYS = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "bench"}


def start_moto() -> tuple[subprocess.Popen[str], str]:
    exe = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError("moto_server did not start")


def bench_aws(total: int, untagged: int) -> None:
    proc, url = start_moto()
    try:
        t0 = time.perf_counter()
        per_region, batch = total // len(REGIONS), 500
        for i, region in enumerate(REGIONS):
            ec2 = boto3.client("ec2", region_name=region, endpoint_url=url, **KEYS)
            count = per_region + (total - per_region * len(REGIONS) if i == 0 else 0)
            for start in range(0, count, batch):
                n = min(batch, count - start)
                tags = [{"Key": "tr7.instance", "Value": f"fw-{region}-{start // batch}"},
                        {"Key": "tr7.bundle", "Value": "pro"}, {"Key": "tr7.bandwidth_mbps", "Value": "500"}]
                ec2.run_instances(ImageId="ami-12c6146b", MinCount=n, MaxCount=n, InstanceType="t3.small",
                                  TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
            if untagged and i == 0:
                ec2.run_instances(ImageId="ami-12c6146b", MinCount=untagged, MaxCount=untagged)
        print(f"aws: seeded {total} tagged + {untagged} untagged instances in {len(REGIONS)} regions "
              f"in {time.perf_counter() - t0:.1f}s")

        os.environ.update({"AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
                           "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
                           "AWS_EC2_METADATA_DISABLED": "true"})
        adapter = AwsAdapter(AwsConfig(name="bench-aws", platform="aws", regions=REGIONS, endpoint_url=url,
                                       timeout=600))
        sent: list[str] = []
        for region in REGIONS:  # count every HTTP attempt, retries included
            adapter.client(region).meta.events.register(
                "before-send.ec2.*", lambda request, **_: sent.append(request.url))
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = adapter.poll()
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert result.error is None, result.error
        # moto runs in its own process: this process's CPU time is the adapter + botocore share
        report("aws", len(result.observations), took, len(sent), f"agent-side CPU {cpu:.2f}s, "
               f"the rest is moto rendering XML")
    finally:
        proc.terminate()
        proc.wait(10)


def bench_azure(total: int, untagged: int) -> None:
    spec = importlib.util.spec_from_file_location("arm_server", ROOT / "tests/adapters/azure/arm_server.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arm: Any = mod.ArmServer(Path(tempfile.mkdtemp(prefix="bench-arm-")))
    try:
        tenant, client, secret = TENANT, "11111111-2222-3333-4444-555555555555", "s"
        subs = ["aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"]
        arm.clients[client] = secret
        for s in subs:
            arm.add_subscription(s, page_size=1000)
        powers = ["running", "running", "running", "deallocated", "stopped"]
        for i in range(total):
            arm.add_vm(subs[i % 2], f"fw{i}", power=powers[i % 5], location=["westeurope", "eastus"][i % 2],
                       tags={"tr7.instance": f"fw-{i}", "tr7.bundle": "pro", "tr7.vservices": "8"})
        for i in range(untagged):
            arm.add_vm(subs[0], f"web{i}", tags={"env": "prod"})
        print(f"azure: seeded {total} tagged + {untagged} untagged VMs in {len(subs)} subscriptions "
              f"(ARM page size 1000)")
        adapter = AzureAdapter(AzureConfig(
            name="bench-azure", platform="azure", subscriptions=subs, tenant_id=tenant, client_id=client,
            client_secret=secret, authority_host=arm.url, resource_manager_url=arm.url,
            ca_file=str(arm.ca_file), timeout=600))
        t0 = time.perf_counter()
        result = adapter.poll()
        took = time.perf_counter() - t0
        assert result.error is None, result.error
        report("azure", len(result.observations), took, len(arm.requests), "incl. 2 sign-in requests")
        arm.requests.clear()
        t0 = time.perf_counter()
        result = adapter.poll()
        report("azure", len(result.observations), time.perf_counter() - t0, len(arm.requests), "token cached")
    finally:
        arm.close()


def report(cloud: str, seen: int, took: float, requests: int, note: str = "") -> None:
    print(f"{cloud}: one poll saw {seen} TR7 instances in {took:.2f}s with {requests} HTTP requests "
          f"({seen / max(requests, 1):.0f} instances/request, {seen / took:.0f} instances/s)"
          + (f" [{note}]" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--untagged", type=int, default=1000, help="VMs without tr7.instance, to filter out")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress while it runs
    bench_aws(args.instances, args.untagged)
    bench_azure(args.instances, args.untagged)


if __name__ == "__main__":
    main()
