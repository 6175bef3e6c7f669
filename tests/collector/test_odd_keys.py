"""A vm id or a declared bundle that PostgreSQL cannot hold in a key (a U+0000, kilobytes of it):
heartbeat-v1.md §2 allows any string, so the lines are accepted, the evidence keeps them exactly,
and the bill from the aggregates still equals the full recomputation."""

import random
import time

import sqlalchemy as sa

from billing.activity import key_text
from collector import accounting, credentials, db, jwsstore, registry
from collector import schema as s
from protocol.heartbeat import TYP, b64url_encode, parse_unverified
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
    # Catalog bundles too long for a key, and one named like the stand-in of the first: all
    # ranked below "pro", as the evidence ranks them whatever the aggregates keep.
    # low3 is no catalog bundle, but its stand-in's text is one.
    low, low2, low3 = "z" + _noise(299, 1), "y" + _noise(299, 4), "x" + _noise(299, 5)
    cat = tools.catalog()
    cat["bundles"] = [low, low2, key_text(low), key_text(low3), "basic", "pro"]
    for lid, inst in (("SL-F", "TR7-0003"), ("SL-G", "TR7-0004"), ("SL-H", "TR7-0005"), ("SL-I", "TR7-0006"),
                      ("SL-J", "TR7-0007")):
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
        b.beat(h + 180, {"TR7-0001": "running"}, vm=key_text(long_vm)),  # named like a stand-in
        a.beat(h + 2 * H, {"TR7-0003": "running"}, capacity={"bundle": low, "bandwidth_mbps": 100}),
        b.beat(h + 3 * H, {"TR7-0004": "running"}, capacity={"bundle": _noise(3000, 3)}),  # unknown: over
        a.beat(h + 4 * H, {"TR7-0005": "running"}, capacity={"bundle": key_text(low2)}),  # unknown too
        b.beat(h + 5 * H, {"TR7-0006": "running"}, capacity={"bundle": key_text(low)}),  # the catalog's
        a.beat(h + 6 * H, {"TR7-0007": "running"}, capacity={"bundle": low3}),  # unknown
    ]
    r = client.post("/v1/heartbeats", content="\n".join(lines), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * len(lines)

    with db.read_conn(settings.engine) as c:
        stored = [
            jwsstore.unpack(v)
            for v in c.execute(sa.select(s.leaves.c.jws).order_by(s.leaves.c.idx)).scalars()
        ]
        vms = set(c.execute(sa.select(s.days.c.vm).where(s.days.c.instance == "TR7-0001")).scalars())
        agg, full = accounting.own_result(c, "acme", m), accounting.full_result(c, "acme", m)
    assert stored == lines  # the evidence is the exact text
    assert parse_unverified(stored[0]).observations[0]["vm"] == nul
    assert vms == {key_text(nul), key_text(long_vm), key_text(key_text(long_vm)), other}
    assert all(len(v) <= 256 for v in vms)
    assert accounting.same_docs(agg, full)
    # The long catalog bundle still ranks below "pro" (read back from its stand-in), and so does
    # the catalog bundle named like that stand-in; bundles of no catalog rank above all.
    flags = {ln["license"]: ln["flags"] for ln in agg[0]["rows"] if ln["license"].startswith("SL-")}
    over = ["over_capacity"]
    assert flags == {"SL-1": [], "SL-F": [], "SL-G": over, "SL-H": over, "SL-I": [], "SL-J": over}, flags

    tok = db.write_tx(
        settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", int(time.time()))
    )
    found = client.get(
        "/v1/providers/acme/alerts", params={"month": m}, headers={"Authorization": f"Bearer {tok}"}
    ).json()["alerts"]
    clones = {tuple(x["vms"]) for x in found if x["type"] == "clone"}
    assert tuple(sorted([key_text(nul), key_text(long_vm)])) in clones
    assert tuple(sorted([key_text(long_vm), key_text(key_text(long_vm))])) in clones


def test_the_stand_in_of_a_key_text_is_kept_apart_and_short_ones_are_themselves() -> None:
    assert key_text("vm-1") == "vm-1" and key_text("x" * 256) == "x" * 256
    assert key_text("x" * 257) != key_text("x" * 258)
    assert key_text("a\u0000b").startswith("sha256:") and len(key_text("a\u0000b")) == 71
    stand_in = key_text("x" * 300)
    assert key_text(stand_in) not in (stand_in, "x" * 300)  # a text spelled like a stand-in is hashed too
    assert key_text("sha256:basic") == "sha256:basic"  # other texts from "sha256:" are kept, as before


def test_a_header_kid_no_key_can_have_is_a_rejected_line_not_a_500(client, settings, tools) -> None:
    """The kids of a batch are looked up before the strict parse: a kid holding a U+0000 or a
    lone surrogate went into that query (PostgreSQL refuses a U+0000, sqlite3 a surrogate)."""
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - H)
    good = a.beat(now - 60, {"TR7-0001": "running"})
    _, payload, sig = good.split(".")
    kids = ("a\\u0000b", "\\ud800", "A" * 32)  # as JSON escapes write them
    heads = ['{"alg":"EdDSA","kid":"' + kid + f'","typ":"{TYP}"}}' for kid in kids]
    odd = [f"{b64url_encode(h.encode())}.{payload}.{sig}" for h in heads]
    r = client.post("/v1/heartbeats", content="\n".join([*odd, good]), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["rejected"] * 3 + ["accepted"]
