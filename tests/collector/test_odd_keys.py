"""A vm id or a declared bundle that PostgreSQL cannot hold in a key (a U+0000, kilobytes of it):
heartbeat-v1.md §2 allows any string, so the lines are accepted, the evidence keeps them exactly,
and the bill from the aggregates still equals the full recomputation."""

import random
import time

import sqlalchemy as sa

from billing.activity import key_text
from collector import accounting, db, jwsstore, registry
from collector import schema as s
from protocol.heartbeat import parse_unverified
from protocol.timefmt import month_bounds, month_of, previous_month

H = 3600
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _noise(n: int, seed: int) -> str:
    """Incompressible text: neither TOAST nor an index entry's compression shrinks it."""
    return "".join(random.Random(seed).choices(_LETTERS, k=n))


def test_vms_and_bundles_a_key_cannot_hold_are_accepted_and_bill_as_the_evidence_says(
    client, settings, tools
):
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    low = "z" + _noise(299, 1)  # a catalog bundle too long for a key, ranked below "pro"
    cat = tools.catalog()
    cat["bundles"] = [low, "basic", "pro"]
    for lid, inst in (("SL-F", "TR7-0003"), ("SL-G", "TR7-0004")):
        cat["licenses"].append({
            "id": lid, "customer": "c1", "instance": inst, "model": "fixed", "unit": "hour",
            "start": "2026-01-01T00:00:00Z", "end": None,
            "capacity": [{"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 100}],
        })
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat))
    a, b = tools.Agent("a"), tools.Agent("b")
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, m0 - 86400)
    nul, long_vm, other = "vm\u0000a", _noise(6000, 2), "vm-b"
    h = m0 + 5 * H
    lines = [
        a.beat(h + 60, {"TR7-0001": "running"}, vm=nul),
        a.beat(h + 660, {"TR7-0001": "running"}, vm=long_vm),  # same hour: a clone of the first
        b.beat(h + 120, {"TR7-0001": "running"}, vm=other),
        a.beat(h + 2 * H, {"TR7-0003": "running"}, capacity={"bundle": low, "bandwidth_mbps": 100}),
        b.beat(h + 3 * H, {"TR7-0004": "running"}, capacity={"bundle": _noise(3000, 3)}),  # unknown: over
    ]
    r = client.post("/v1/heartbeats", content="\n".join(lines), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 5

    with db.read_conn(settings.engine) as c:
        stored = [
            jwsstore.unpack(v)
            for v in c.execute(sa.select(s.leaves.c.jws).order_by(s.leaves.c.idx)).scalars()
        ]
        vms = set(c.execute(sa.select(s.days.c.vm).where(s.days.c.instance == "TR7-0001")).scalars())
        agg, full = accounting.own_result(c, "acme", m), accounting.full_result(c, "acme", m)
    assert stored == lines  # the evidence is the exact text
    assert parse_unverified(stored[0]).observations[0]["vm"] == nul
    assert vms == {key_text(nul), key_text(long_vm), other} and all(len(v) <= 256 for v in vms)
    assert accounting.same_docs(agg, full)
    # The long catalog bundle still ranks below "pro" (read from the aggregates in its stand-in
    # form too); the unknown one above all of them.
    flags = {ln["license"]: ln["flags"] for ln in agg[0]["rows"] if ln["license"] in ("SL-F", "SL-G")}
    assert flags == {"SL-F": [], "SL-G": ["over_capacity"]}, flags

    tok = db.write_tx(
        settings.engine, lambda c: registry.new_api_token(c, "acme", "viewer", int(time.time()))
    )
    found = client.get(
        "/v1/providers/acme/alerts", params={"month": m}, headers={"Authorization": f"Bearer {tok}"}
    ).json()["alerts"]
    clones = {tuple(x["vms"]) for x in found if x["type"] == "clone"}
    assert tuple(sorted([key_text(nul), key_text(long_vm)])) in clones


def test_the_stand_in_of_a_key_text_is_kept_apart_and_short_ones_are_themselves() -> None:
    assert key_text("vm-1") == "vm-1" and key_text("x" * 256) == "x" * 256
    assert key_text("x" * 257) != key_text("x" * 258)
    assert key_text("a\u0000b").startswith("sha256:") and len(key_text("a\u0000b")) == 71
