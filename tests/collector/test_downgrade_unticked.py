"""billing-v1.md §8: a customer 15 days unpaid is downgraded and its PAYG hours are not billed,
whether or not the accounts' tick has run by the time the month is billed or closed.

Found by an adversarial review: only the periods a tick had recorded were overlaid on the
catalog, so a month closed with the tick stopped (TR7_ACCOUNTS_TICK=0, the server down) billed
and froze every hour after the grace period, and the later tick changed nothing.
"""

import subprocess
import sys
import time

from collector import accounting, db, registry
from collector.accounts import store
from collector.export import export
from collector.ingest import ingest_lines
from protocol.timefmt import month_bounds, month_of, previous_month

H, DAY = 3600, 86400


def test_a_month_closed_before_the_tick_bills_no_downgraded_hour(settings, tools, tmp_path) -> None:
    m = previous_month(month_of(int(time.time())))
    m0, m1 = month_bounds(m)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, m0 - DAY)
    beats = [a.beat(t, {"TR7-0001": "running"}) for t in range(m0 + 600, m1, H)]
    assert {r["status"] for r in ingest_lines(settings.engine, beats)} == {"accepted"}
    failed = m0 + DAY + 12 * H  # day 2, noon: downgraded from day 17, noon
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", failed))
    billed = (failed + 15 * DAY - m0) // H  # the hours before the downgrade

    with db.read_conn(settings.engine) as c:  # the open estimate, no tick run
        assert accounting.own_result(c, "acme", m)[1]["lines"][0]["quantity"] == billed
        assert store.periods(c, "acme")["c1"] == [(failed + 15 * DAY, None)]
    closed = db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    assert closed.invoice["lines"][0]["quantity"] == billed

    # The tick runs at last: it records the same period, and nothing is adjusted.
    done = db.write_tx(settings.engine, lambda c: store.tick_all(c, m1 + DAY))
    assert [(act.kind, act.at) for _p, _c, act in done] == [("downgraded", failed + 15 * DAY)]
    with db.read_conn(settings.engine) as c:
        assert store.periods(c, "acme")["c1"] == [(failed + 15 * DAY, None)]
        assert accounting.own_result(c, "acme", m) == (closed.usage, closed.invoice)
        later = accounting.invoice(c, "acme", month_of(int(time.time())))
        assert [x for x in later["lines"] if x["adjusts"] == m] == []
        _path, agrees = export(c, settings, "acme", m, tmp_path / "bundle")
    assert agrees
    r = subprocess.run([sys.executable, "-m", "audit.cli", "verify", "--quiet", str(tmp_path / "bundle")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_account_paid_within_the_grace_period_is_never_downgraded(settings, tools) -> None:
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", m0 + DAY))
    with db.read_conn(settings.engine) as c:
        assert store.periods(c, "acme", now=m0 + 16 * DAY - 1) == {}  # still in grace
        assert store.periods(c, "acme", now=m0 + 16 * DAY) == {"c1": [(m0 + 16 * DAY, None)]}
    db.write_tx(settings.engine, lambda c: store.paid(c, "acme", "c1", m0 + 10 * DAY))
    with db.read_conn(settings.engine) as c:
        assert store.periods(c, "acme") == {}
