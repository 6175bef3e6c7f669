"""Activity: the evidence billing keeps from heartbeats (hours seen, hours running, declarations)."""

from billing import Activity


def test_from_heartbeats_keeps_hours_and_declarations(kit):
    a = kit.Agent()
    beats = [a.beat("2 10:05", kit.obs("X", capacity={"bundle": "pro"}), kit.obs("Y", "stopped")),
             a.beat("2 10:50", kit.obs("X", "paused", {"bundle": "pro"}), kit.obs("Y", capacity={})),
             a.beat("2 11:05", kit.obs("Y", "stopped"))]
    act = Activity.from_heartbeats(beats)
    h = kit.T("2 10:00")
    assert act.active == {"X": {h}, "Y": {h}}
    assert act.seen == {"X": {h}, "Y": {h, h + 3600}}
    assert act.declared == {"X": {("pro", None, None): [kit.T("2 10:05"), kit.T("2 10:50")]},
                            "Y": {(None, None, None): [kit.T("2 10:50")]}}


def test_declarations_can_be_limited_to_some_instances(kit):
    a = kit.Agent()
    beats = [a.beat("2 10:05", kit.obs("X", capacity={"vservices": 3}),
                    kit.obs("Y", capacity={"vservices": 4}))]
    act = Activity.from_heartbeats(beats, declared_for={"Y"})
    assert act.declared == {"Y": {(None, None, 4): [kit.T("2 10:05")]}}
    assert set(act.seen) == {"X", "Y"}
