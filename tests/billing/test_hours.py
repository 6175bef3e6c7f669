"""Hour classes and the gap policy (billing-v1.md §2), end to end from signed heartbeats."""

from billing import bill

HOURS_IN_NOVEMBER = 720


def _line_qty(result, license_id):
    return sum(x["quantity"] for x in result.invoice["lines"] if x["license"] == license_id)


def test_active_inactive_unknown(kit):
    a, b = kit.Agent(), kit.Agent()
    beats = [
        a.beat("2 10:05", kit.obs("X")), a.beat("2 10:35", kit.obs("X")),  # two polls, one hour
        b.beat("2 10:40", kit.obs("X")),  # another agent, same hour: still one active hour
        a.beat("2 11:05", kit.obs("X", "stopped")),  # seen, not running: inactive
        a.beat("2 12:05", kit.obs("X", "paused")), b.beat("2 12:59", kit.obs("X", "running")),
        a.beat("2 13:05", kit.obs("X", "suspended")), a.beat("2 14:05", kit.obs("X", "unknown")),
    ]
    res = bill(beats, kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["bridged_hours"], r["unknown_hours"]) == (2, 0, HOURS_IN_NOVEMBER - 5)
    assert r["payg_hours"] == 2 and _line_qty(res, "SL-1") == 2


def test_heartbeat_time_decides_the_hour(kit):
    a = kit.Agent()
    beats = [a.beat("2026-11-02T10:59:59Z", kit.obs("X")), a.beat("2026-11-02T11:00:00Z", kit.obs("X")),
             a.beat("2026-11-02T11:59:59Z", kit.obs("X"))]
    res = bill(beats, kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    assert kit.row(res.usage, "SL-1")["active_hours"] == 2


def _gap_scenario(kit, states):
    """Hour 10 active, then one entry per following hour: 'r' running, 's' stopped, '-' nothing."""
    a = kit.Agent()
    beats = [a.beat("5 10:10", kit.obs("X"))]
    for k, s in enumerate(states, start=1):
        if s != "-":
            state = "running" if s == "r" else "stopped"
            beats.append(a.beat(kit.T("5 10:10") + k * 3600, kit.obs("X", state)))
    return beats


def test_evidence_mode_bills_only_active_hours(kit):
    res = bill(_gap_scenario(kit, "--r"), kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["bridged_hours"], r["payg_hours"]) == (2, 0, 2)
    assert r["unknown_hours"] == HOURS_IN_NOVEMBER - 2


def test_bridge_fills_short_runs_between_active_hours(kit):
    res = bill(_gap_scenario(kit, "--r"), kit.catalog(kit.lic("SL-1", "X"), bridge=2), kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["bridged_hours"], r["payg_hours"]) == (2, 2, 4)
    assert r["unknown_hours"] == HOURS_IN_NOVEMBER - 4  # unknown means: not bridged either
    assert _line_qty(res, "SL-1") == 4


def test_bridge_max_hours_is_inclusive(kit):
    too_long = bill(_gap_scenario(kit, "---r"), kit.catalog(kit.lic("SL-1", "X"), bridge=2), kit.MONTH)
    assert kit.row(too_long.usage, "SL-1")["bridged_hours"] == 0
    exact = bill(_gap_scenario(kit, "---r"), kit.catalog(kit.lic("SL-1", "X"), bridge=3), kit.MONTH)
    assert kit.row(exact.usage, "SL-1")["bridged_hours"] == 3


def test_bridge_needs_active_hours_on_both_sides(kit):
    # The run before a stopped hour is not bridged, nor the run after it before the next active.
    res = bill(_gap_scenario(kit, "-s-r"), kit.catalog(kit.lic("SL-1", "X"), bridge=5), kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["bridged_hours"], r["payg_hours"]) == (2, 0, 2)


def test_bridge_needs_both_neighbours_inside_the_month(kit):
    a = kit.Agent()
    beats = [a.beat("2026-10-31T23:10:00Z", kit.obs("X")),  # October: not this month's evidence
             a.beat("2026-11-01T01:10:00Z", kit.obs("X")),  # Nov 1 00:00 unknown: no active before it
             a.beat("2026-11-30T22:10:00Z", kit.obs("X")),  # Nov 30 23:00 unknown: nothing after it
             a.beat("2026-12-01T00:10:00Z", kit.obs("X"))]
    res = bill(beats, kit.catalog(kit.lic("SL-1", "X"), bridge=5), kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["bridged_hours"]) == (2, 0)


def test_bridged_hours_are_bridged_per_instance_not_per_agent(kit):
    a, b = kit.Agent(), kit.Agent()
    beats = [a.beat("5 10:10", kit.obs("X")), b.beat("5 11:10", kit.obs("Y")),
             a.beat("5 12:10", kit.obs("X"))]
    res = bill(beats, kit.catalog(kit.lic("SL-X", "X"), kit.lic("SL-Y", "Y"), bridge=1), kit.MONTH)
    assert kit.row(res.usage, "SL-X")["bridged_hours"] == 1  # Y's heartbeat says nothing of X
    assert kit.row(res.usage, "SL-Y")["bridged_hours"] == 0
