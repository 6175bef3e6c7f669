"""Property: the chain rules run by the database equal protocol.chain.analyze_links over the same leaves."""

import hashlib
import itertools
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import chainsql, evidence
from collector import schema as s
from collector.settings import Settings
from protocol.chain import Link, analyze_links, anchor_map

MONTH, BEFORE = "2026-05", "2026-04"
KIDS = ["kid-a", "kid-b", "kid-c"]
_n = itertools.count()


def _digest(label: str) -> str:
    return hashlib.sha256(f"{label}-{next(_n)}".encode()).hexdigest()


@st.composite
def key_months(draw: st.DrawFn, kid: str) -> tuple[list[Link], list[Link]]:
    """One key: its leaves of the month before (anchor candidates) and of the month, every defect."""
    first = draw(st.integers(1, 6))
    n = draw(st.integers(1, 10))
    true: list[Link] = []
    prev, t = "0" * 64, 1_000
    for seq in range(first - 2, first + n):
        t += draw(st.sampled_from([300, 300, 300, 0, -1, -50, 900]))  # some clocks go back or stand still
        true.append(Link(kid, seq, prev, t, _digest(f"{kid}-{seq}")))
        prev = true[-1].digest
    before, month = true[:2], true[2:]
    beats: list[Link] = []
    for link in month:
        what = draw(st.sampled_from(["keep"] * 6 + ["drop", "break", "fork", "fork-break", "late"]))
        if what == "drop":
            continue
        if what == "break":
            link = link._replace(prev=_digest("elsewhere"), digest=_digest(f"{link.digest}-b"))
        if what == "late":  # logged with a clock far behind its predecessor
            link = link._replace(time=link.time - draw(st.integers(1, 2_000)))
        beats.append(link)
        if what.startswith("fork"):  # another JWS with the same seq
            prev_of = _digest("elsewhere") if what == "fork-break" else link.prev
            beats.append(link._replace(prev=prev_of, digest=_digest("fork"), time=link.time + draw(
                st.integers(-400, 400))))
    if not beats:
        beats.append(month[0])
    last = max(b.seq for b in beats)
    kind = draw(st.sampled_from(["none", "true", "one", "other", "gap", "inside", "above", "tie", "late"]))
    jump = draw(st.integers(-400, 400))
    old: list[Link] = []
    if kind == "true":
        old = list(before)
    elif kind == "one":
        old = [before[1]]
    elif kind == "other":  # the month's first beat does not link to last month's final one
        old = [before[0], before[1]._replace(digest=_digest("other"), time=before[1].time + jump)]
    elif kind == "gap":
        old = [before[0]]
    elif kind == "inside":  # last month's final seq is reused this month by another JWS
        at = draw(st.sampled_from(beats))
        old = [before[0], at._replace(digest=_digest("reused"), time=at.time + jump)]
    elif kind == "above":
        old = [before[1]._replace(seq=last + draw(st.integers(0, 3)), digest=_digest("ahead"))]
    elif kind == "tie":  # two JWS share last month's highest seq: the first logged is the anchor
        old = [before[1]._replace(digest=_digest("tie"), time=before[1].time + jump), before[1]]
    elif kind == "late":
        old = [before[1]._replace(time=beats[0].time + abs(jump) + 1)]
    return old, beats


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[Link], list[Link], int | None]:
    kids = draw(st.lists(st.sampled_from(KIDS), min_size=1, max_size=3, unique=True))
    old: list[Link] = []
    beats: list[Link] = []
    for kid in kids:
        o, b = draw(key_months(kid))
        old.extend(o)
        beats.extend(b)
    beats = draw(st.permutations(beats))
    size = draw(st.one_of(st.none(), st.integers(1, len(beats))))
    return old, beats, size


def _rows(provider: str, month: str, links: list[Link]) -> list[dict[str, Any]]:
    return [
        {
            "provider": provider, "month": month, "idx": i, "digest": ln.digest, "leaf_hash": b"\0" * 32,
            "kid": ln.kid, "seq": ln.seq, "prev": ln.prev, "time": ln.time, "interval": 300,
            "received_at": ln.time, "jws": "-",
        }
        for i, ln in enumerate(links)
    ]


def _store(conn: sa.Connection, old: list[Link], beats: list[Link]) -> None:
    conn.execute(s.leaves.delete())
    rows = _rows("acme", BEFORE, old) + _rows("acme", MONTH, beats)
    # Another provider's leaves of the same month and keys, with other seqs: never read for acme.
    rows += _rows("beta", MONTH, [b._replace(seq=b.seq * 3 + 1, digest=_digest("beta")) for b in beats])
    conn.execute(s.leaves.insert(), rows)


def _anchors(old: list[Link]) -> dict[str, Any]:
    """Each key's last heartbeat of the month before: its highest seq, every copy when forked."""
    return anchor_map(old)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=logs())
def test_sql_chain_rules_equal_analyze_links(
    settings: Settings, case: tuple[list[Link], list[Link], int | None]
) -> None:
    old, beats, size = case
    with settings.engine.begin() as conn:
        _store(conn, old, beats)
        got = evidence.chain_analysis(conn, "acme", MONTH, size)
    want = analyze_links(beats[:size], _anchors(old))
    assert got == want


def test_sqlite_reads_the_chain_columns_from_the_covering_index(tmp_path: Any) -> None:
    """Without it every leaf's row (with its JWS) is read: the bill from aggregates is 3x slower."""
    engine = Settings(tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}", "collector.test").open()
    with engine.connect() as conn:
        for size in (None, 5):
            q = chainsql._exceptions_query("acme", MONTH, size)
            sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            leaves = [p for p in plan if p.split(" ")[:2] in (["SEARCH", t] for t in "abc")
                      or p.startswith("SEARCH leaves ")]
            assert leaves and all("COVERING INDEX ix_leaves_chain" in p for p in leaves), plan


def test_postgresql_chain_rules_are_one_pass_without_statistics(pg_admin_url: str, tmp_path: Any) -> None:
    """Unanalysed after a bulk ingest, PostgreSQL merge-joined each key's leaves with each other
    (83 million rows, 14 s for 57,600 leaves): its query must hold no join for a planner to pick."""
    from collector.pgtemp import new_database

    engine = Settings(tmp_path / "data", new_database(pg_admin_url), "collector.test").open()
    links = [Link(k, q, "0" * 64, 1_000 + q, _digest(k)) for k in KIDS for q in range(1, 400)]
    with engine.begin() as conn:
        conn.execute(s.leaves.insert(), _rows("acme", MONTH, links))
        for size in (None, 5):
            q = chainsql._window_query("acme", MONTH, size)
            sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()
            nodes = _plan_nodes(plan[0]["Plan"])
            assert "WindowAgg" in nodes and not {"Merge Join", "Nested Loop", "Hash Join"} & set(nodes), nodes
    engine.dispose()


def _plan_nodes(node: dict[str, Any]) -> list[str]:
    return [node["Node Type"], *(n for child in node.get("Plans", []) for n in _plan_nodes(child))]
