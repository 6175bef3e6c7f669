"""`make demo`: simulators, a collector, a live agent, a replayed month, its bill and audit bundle."""

import argparse
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from protocol.timefmt import format_time, previous_month
from scripts.demo import catalog, live, replay, report, sims
from scripts.demo.run import (
    BIN,
    ROOT,
    DemoError,
    Processes,
    Progress,
    cli,
    cli_full,
    free_port,
    http_ok,
    tail,
)
from scripts.demo.run import prepare_dir as wipe_dir

STEPS = 9


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(os.environ.get("TR7_DEMO_DIR", ROOT / ".work" / "demo")),
                   help="demo directory, wiped at start (env TR7_DEMO_DIR; default .work/demo)")
    p.add_argument("--no-wait", action="store_true", default=os.environ.get("TR7_DEMO_NO_WAIT") == "1",
                   help="stop everything and exit at the end instead of serving until Ctrl-C "
                        "(env TR7_DEMO_NO_WAIT=1)")
    p.add_argument("--interval", type=int, default=5, help="live agent's poll interval, seconds")
    p.add_argument("--polls", type=int, default=3, help="heartbeats the live agent ships before it stops")
    p.add_argument("--no-vcsim", action="store_true", help="leave the vSphere simulator out")
    return p.parse_args(argv)


def start_collector(procs: Processes, demo: Path, say: Progress) -> tuple[str, str]:
    data = str(demo / "collector")
    cli("tr7-collector", "migrate", "--data-dir", data, "--origin", "collector.demo-msp.example")
    for _attempt in range(3):  # the free port can be taken between the probe and uvicorn's bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = demo / "logs" / "collector.log"
        proc = procs.start("tr7-collector serve", [str(BIN / "tr7-collector"), "serve", "--data-dir", data,
                                                   "--listen", f"127.0.0.1:{port}"], log)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if http_ok(url + "/healthz"):
                    say.info(f"tr7-collector serve --data-dir {data} --listen 127.0.0.1:{port} "
                             f"(pid {proc.pid}, log {log})")
                    return url, data
            except OSError:
                time.sleep(0.3)
        Processes.terminate(proc)
    raise DemoError("the collector did not answer /healthz", tail(demo / "logs" / "collector.log"))


def bill(data: str, month: str, fmt: str, out: Path | None = None) -> str:
    args = ["bill", "--data-dir", data, "--provider", catalog.PROVIDER, "--month", month, "--format", fmt]
    return cli("tr7-collector", *args, *(["--out", str(out)] if out else []))


def demo(args: argparse.Namespace, procs: Processes, say: Progress) -> dict[str, Any]:
    now = int(time.time())
    current = format_time(now)[:7]
    prev = previous_month(current)
    summary: dict[str, Any] = {"current_month": current, "closed_month": prev}

    say("Simulators: libvirt test:/// node, moto EC2 server, vSphere simulator (vcsim)")
    demo_dir = wipe_dir(args.dir)
    (demo_dir / "logs").mkdir()
    summary["dir"] = str(demo_dir)
    env = sims.start_all(procs, demo_dir, with_vcsim=not args.no_vcsim)
    say.info(f"libvirt: {env.kvm_uri}")
    say.info(f"moto EC2: {env.moto_url} (regions {', '.join(sims.AWS_REGIONS)})")
    say.info(f"vcsim: {env.vcsim_url} ({env.vcsim_note})" if env.vcsim_url else f"vcsim: {env.vcsim_note}")
    summary["vcsim"] = bool(env.vcsim_url)

    say("Collector on SQLite")
    url, data = start_collector(procs, demo_dir, say)
    summary["collector_url"] = url

    say(f"Catalog of {catalog.PROVIDER}: the simulated {prev} customers plus the live instances")
    sc = replay.scenario(prev)
    doc = catalog.build(sc.catalog, current, env.live)
    cat_path = demo_dir / "catalog.json"
    cat_path.write_text(json.dumps(doc, indent=2) + "\n")
    out = cli("tr7-collector", "apply", "--data-dir", data, str(cat_path))
    say.info(f"{cat_path}: {len(doc['customers'])} customers, {len(doc['licenses'])} licenses, "
             f"{len(doc['rates']['hourly'])} hourly rates in EUR")
    say.info(out.splitlines()[0] if out else "applied")

    say("Live agent: enrol with a one-time token, check its adapters")
    config = live.write_config(demo_dir, env, url, args.interval)
    kid = live.enrol(demo_dir, config, data, say)
    summary["live_kid"] = kid
    live.check(demo_dir, config, say)

    say(f"Live agent: tr7-agent run for {args.polls} heartbeats, then SIGTERM")
    summary["live_shipped"] = live.run_polls(demo_dir, config, args.interval, args.polls, procs, say)
    live.status(demo_dir, config, say)

    say(f"Replay of {prev}: signed heartbeats of three simulated agents through POST /v1/heartbeats")
    gaps = "; ".join(f"{a}: seq {r[0][0]}..{r[0][1]} never delivered" for a, r in sc.expected["gaps"].items())
    forks = "; ".join(f"{a}: seq {', '.join(map(str, r))} signed twice"
                      for a, r in sc.expected["forks"].items())
    say.info(f"audit.simulate: {len(sc.agents)} agents at a {sc.interval} s interval, {len(sc.leaves)} "
             f"heartbeats; gap ({gaps}); fork ({forks})")
    for name, akid in replay.enrol(sc, data):
        say.info(f"tr7-collector agent add --name {name}: {akid}")
    on_time, late = replay.split_late(sc)
    t0 = time.monotonic()
    counts = replay.send(on_time, url)
    say.info(f"{sum(counts.values())} heartbeats sent in {time.monotonic() - t0:.1f} s: "
             + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    say.info(cli("tr7-collector", "close", "--data-dir", data, "--provider", catalog.PROVIDER,
                 "--month", prev).strip())
    counts = replay.send(late, url)
    say.info(f"{sum(counts.values())} late heartbeats of {prev} (dc1-agent's last 6 hours) sent after "
             f"the close: {counts['accepted']} accepted; they become adjustment lines on {current}")
    summary["late"] = counts["accepted"]

    say(f"Invoice of the closed month {prev}")
    names = {c["id"]: c["name"] for c in doc["customers"]}
    inv = json.loads(bill(data, prev, "json"))
    csv_path, pdf_path = demo_dir / f"invoice-{prev}.csv", demo_dir / f"invoice-{prev}.pdf"
    bill(data, prev, "csv", csv_path)
    bill(data, prev, "pdf", pdf_path)
    say.info(report.invoice_table(inv, names))
    say.info("")
    say.info(f"invoice CSV: {csv_path}")
    say.info(f"invoice PDF: {pdf_path}")
    summary.update(invoice_csv=str(csv_path), invoice_pdf=str(pdf_path), closed_total=inv["total"],
                   closed_customers=sorted(inv["totals"]))

    say(f"Audit bundle of {prev}, verified offline by tr7-audit")
    bundle = demo_dir / f"bundle-{prev}"
    cli("tr7-collector", "export", "--data-dir", data, "--provider", catalog.PROVIDER, "--month", prev,
        "--out", str(bundle))
    v = cli_full("tr7-audit", "verify", str(bundle))
    say.info(f"audit bundle: {bundle}")
    say.info("$ .venv/bin/tr7-audit verify " + str(bundle))
    # Keep the findings and the verdict; drop the progress lines of the long files.
    say.info("\n".join(ln for ln in (v.stdout + v.stderr).splitlines()
                       if ln.strip() and not re.search(r"\d+/\d+ lines \(\d+%\)$", ln)))
    if v.returncode != 0:
        raise DemoError(f"tr7-audit verify exited {v.returncode}", (v.stdout + v.stderr).strip())
    summary["bundle"] = str(bundle)

    say(f"Current month {current}: the live agent's hours and the estimate so far")
    token = cli("tr7-collector", "token", "add", "--data-dir", data, "--provider", catalog.PROVIDER,
                "--role", "admin").strip()
    (demo_dir / "api-token").write_text(token + "\n")
    import httpx

    usage = httpx.get(f"{url}/v1/providers/{catalog.PROVIDER}/instances", params={"month": current},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60).raise_for_status().json()
    licensed = {li["instance"]: li["id"] for li in doc["licenses"]}
    say.info(report.hours_table(usage, licensed))
    say.info("")
    estimate = json.loads(bill(data, current, "json"))
    say.info(report.invoice_table(estimate, names))
    summary["current_instances"] = {i["instance"]: i["days"] for i in usage["instances"]}
    summary["current_total"] = estimate["total"]

    password = secrets.token_urlsafe(12)
    p = cli_full("tr7-collector", "user", "add", "--data-dir", data, "--provider", catalog.PROVIDER,
                 "--role", "admin", "--username", "demo", env={"TR7_WEB_PASSWORD": password})
    summary["web_user"] = p.returncode == 0
    if p.returncode == 0:
        (demo_dir / "web-password").write_text(password + "\n")
    else:
        say.info(f"web sign-in user not created (exit {p.returncode}): {(p.stderr or p.stdout).strip()}")
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def closing_words(s: dict[str, Any], seconds: float, waiting: bool) -> None:
    d = s["dir"]
    print(f"\n== TR7 metering demo: done in {seconds:.0f} s")
    print(f"   closed month {s['closed_month']}: total {s['closed_total']} EUR "
          f"for {len(s['closed_customers'])} customers")
    print(f"   invoice PDF:   {s['invoice_pdf']}")
    print(f"   audit bundle:  {s['bundle']}  (tr7-audit verify: OK)")
    print(f"   current month {s['current_month']}: estimate {s['current_total']} EUR so far, "
          f"{s['live_shipped']} live heartbeats")
    print(f"   collector:     {s['collector_url']}  (data dir {d}/collector)")
    if s.get("web_user"):
        print(f"   web pages:     {s['collector_url']}/ui/login  user demo, password in {d}/web-password")
    print(f"   read API:      curl -H \"Authorization: Bearer $(cat {d}/api-token)\" "
          f"{s['collector_url']}/v1/providers/{catalog.PROVIDER}/alerts?month={s['closed_month']}")
    print(f"   CLI:           .venv/bin/tr7-collector bill --data-dir {d}/collector --provider "
          f"{catalog.PROVIDER} --month {s['current_month']} --format csv")
    if waiting:
        print("\nThe collector keeps running; press Ctrl-C to stop it and the simulators.", flush=True)


# Settings of the caller's own collector or AWS account must not leak into the demo (its point is
# SQLite in its own directory, and simulators that accept any key).
SCRUBBED = ("TR7_COLLECTOR_DB", "TR7_COLLECTOR_DATA_DIR", "TR7_COLLECTOR_ORIGIN", "TR7_COLLECTOR_LISTEN",
            "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
            "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    for name in SCRUBBED:
        os.environ.pop(name, None)
    procs = Processes()

    def _term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Explicitly: a shell starting the demo in the background would leave SIGINT ignored.
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    started = time.monotonic()
    say = Progress(STEPS)
    try:
        summary = demo(args, procs, say)
        say.done()
        closing_words(summary, time.monotonic() - started, not args.no_wait)
        if not args.no_wait:
            collector = next(p for label, p, _ in procs.procs if label == "tr7-collector serve")
            collector.wait()
            print(f"demo: the collector exited with {collector.returncode}", file=sys.stderr)
            return 1
        return 0
    except Exception as exc:
        print(f"\ndemo FAILED at step {say.n}/{STEPS} ({say.step}): {exc}", file=sys.stderr)
        if isinstance(exc, DemoError):
            if exc.output:
                print("--- output of the failing command ---\n" + exc.output.rstrip(), file=sys.stderr)
        else:
            traceback.print_exc()
        print(f"(logs under {args.dir.resolve() / 'logs'})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: stopping", file=sys.stderr)
        return 0
    finally:
        stopped = procs.stop_all()
        if stopped:
            print(f"demo: stopped {', '.join(stopped)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
