"""`make demo` end to end: real simulators, collector, agent, replayed month, bill, audit bundle."""

import csv
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Demo = tuple[Path, subprocess.CompletedProcess[str]]
SIMULATED_CUSTOMERS = {"c1", "c2", "c3"}  # audit.simulate's scenario
LIVE_RUNNING_PAYG = {"TR7-KVM-01", "TR7-KVM-02", "TR7-AWS-01", "TR7-VC-02"}
LIVE_NOT_RUNNING = {"TR7-KVM-03", "TR7-KVM-04", "TR7-AWS-03", "TR7-VC-03"}  # paused, shut off, stopped


def _demo(demo_dir: Path, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.demo", "--dir", str(demo_dir), "--no-wait", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _collector(demo_dir: Path, *args: str) -> str:
    p = subprocess.run([str(BIN / "tr7-collector"), *args, "--data-dir", str(demo_dir / "collector")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    demo_dir = tmp_path_factory.mktemp("demo") / "d"
    return demo_dir, _demo(demo_dir)


def test_demo_exits_0_and_prints_each_step(demo: Demo) -> None:
    _demo_dir, p = demo
    assert p.returncode == 0
    for n in range(1, 10):
        assert f"[{n}/9] " in p.stdout
    assert "== TR7 metering demo: done" in p.stdout
    # every background process was stopped: the collector's port no longer answers
    url = re.search(r"collector:\s+(http://127\.0\.0\.1:\d+)", p.stdout)
    assert url, p.stdout[-2000:]
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get(url.group(1) + "/healthz", timeout=5)


def test_closed_month_invoice_bills_the_simulated_customers(demo: Demo) -> None:
    demo_dir, p = demo
    summary = json.loads((demo_dir / "summary.json").read_text())
    month = summary["closed_month"]
    served = _collector(demo_dir, "bill", "--provider", "demo-msp", "--month", month, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(served)))
    billed = {r["customer"] for r in rows if r["kind"] in ("hours", "device_days")}
    assert billed == SIMULATED_CUSTOMERS
    # the CSV the demo wrote is the closed month's invoice as the collector serves it
    assert (demo_dir / f"invoice-{month}.csv").read_text() == served
    closed = json.loads(_collector(demo_dir, "bill", "--provider", "demo-msp", "--month", month))
    assert closed["total"] == summary["closed_total"] and closed["total"] != "0.00"
    assert f"closed demo-msp {month}" in p.stdout


def test_invoice_pdf_is_a_pdf(demo: Demo) -> None:
    _demo_dir, p = demo
    m = re.search(r"invoice PDF:\s+(\S+)", p.stdout)
    assert m, p.stdout[-2000:]
    pdf = Path(m.group(1))
    assert pdf.read_bytes().startswith(b"%PDF")


def test_printed_bundle_passes_tr7_audit_verify(demo: Demo) -> None:
    _demo_dir, p = demo
    m = re.search(r"audit bundle:\s+(\S+)", p.stdout)
    assert m, p.stdout[-2000:]
    v = subprocess.run([str(BIN / "tr7-audit"), "verify", m.group(1)], capture_output=True, text=True,
                       timeout=300)
    assert v.returncode == 0, v.stdout + v.stderr
    assert ": OK in " in v.stderr


def test_live_agent_hours_are_in_the_current_month(demo: Demo) -> None:
    demo_dir, _p = demo
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert summary["vcsim"] is True  # make test builds the simulator: the demo must have used it
    assert summary["live_shipped"] >= 3
    estimate = json.loads(_collector(demo_dir, "bill", "--provider", "demo-msp", "--month",
                                     summary["current_month"]))
    # dc1-agent's last 6 hours of the closed month arrived after the close: billed now, as adjustments
    adjust = {ln["instance"]: ln["quantity"] for ln in estimate["lines"] if ln["adjusts"] is not None}
    assert {ln["adjusts"] for ln in estimate["lines"] if ln["adjusts"]} == {summary["closed_month"]}
    assert adjust["TR7-A01"] == 6 and summary["late"] == 36
    hours = {ln["instance"]: ln["quantity"] for ln in estimate["lines"] if ln["adjusts"] is None}
    assert set(hours) == LIVE_RUNNING_PAYG  # the fixed-term one and the unlicensed one are not priced
    assert all(q >= 1 for q in hours.values())
    assert {(d["customer"], d["pack"]) for d in estimate["device_days"]} == {("s1", "professional")}
    instances = summary["current_instances"]
    for inst in LIVE_RUNNING_PAYG | {"TR7-VC-01", "TR7-KVM-05"}:
        assert sum(d["active_hours"] for d in instances[inst].values()) >= 1, inst
    for inst in LIVE_NOT_RUNNING:
        days = instances[inst].values()
        assert sum(d["active_hours"] for d in days) == 0 and sum(d["seen_hours"] for d in days) >= 1, inst
    agents = json.loads(_collector(demo_dir, "agent", "list", "--provider", "demo-msp"))
    assert "demo-live-agent" in {a["name"] for a in agents}


def test_web_user_printed_at_the_end_exists(demo: Demo) -> None:
    demo_dir, p = demo
    assert "user demo, password in" in p.stdout and (demo_dir / "web-password").read_text().strip()
    assert "demo\tdemo-msp\tadmin" in _collector(demo_dir, "user", "list")


def test_refuses_to_wipe_a_directory_it_did_not_create(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    p = _demo(tmp_path, timeout=120)
    assert p.returncode == 1
    assert "demo FAILED at step 1/9" in p.stderr and "is not a demo directory" in p.stderr
    assert mine.read_text() == "keep me"


def test_without_no_wait_serves_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "scripts.demo", "--dir", str(tmp_path / "d"), "--no-vcsim",
                             "--interval", "2", "--polls", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(seen)
        assert "press Ctrl-C" in text, text[-3000:]
        collector = re.search(r"collector:\s+(http://127\.0\.0\.1:\d+)", text)
        moto = re.search(r"moto EC2: (http://127\.0\.0\.1:\d+)", text)
        assert collector and moto
        assert httpx.get(collector.group(1) + "/healthz", timeout=10).status_code == 200
        assert httpx.get(collector.group(1) + "/ui/login", timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        rest = proc.stdout.read()
        assert "stopped tr7-collector serve, moto_server" in rest
        for url in (collector.group(1) + "/healthz", moto.group(1) + "/moto-api/"):
            with pytest.raises(httpx.ConnectError):
                httpx.get(url, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
