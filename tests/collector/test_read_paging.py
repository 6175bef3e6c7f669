"""Keyset paging of /instances, /agents and /alerts: pages joined give the whole list, in order, once."""

import time

from collector import db, registry
from collector.paging import MAX_LIMIT, page
from tests.collector.test_api import _auth, _token

HEADERS = {"Content-Type": "text/plain"}


def _walk(client, path: str, member: str, key: str, limit: int, tok: str) -> list[list[str]]:
    pages, after = [], None
    for _ in range(50):  # bounded: a cursor that does not move fails the test, not hangs it
        q = f"{path}?limit={limit}" + ("" if after is None else f"&after={after}")
        body = client.get(q, headers=_auth(tok)).json()
        pages.append([x[key] for x in body[member]])
        after = body["next_after"]
        if after is None:
            return pages
        assert after == pages[-1][-1]  # the cursor is the page's last key
    raise AssertionError(f"no last page after 50: {pages[:3]}")


def test_pages_of_instances_and_agents_join_into_the_whole_list(client, settings, tools) -> None:
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog("acme")))
    now = int(time.time())
    agents = [tools.Agent(f"a{i}") for i in range(3)]
    lines = []
    for i, agent in enumerate(agents):
        tools.enrol(settings, "acme", agent, now - 7200)
        lines.append(agent.beat(now - 60, {f"TR7-{i}{j}": "running" for j in range(3)}))
    assert client.post("/v1/heartbeats", content="\n".join(lines), headers=HEADERS).status_code == 200
    tok = _token(settings, "acme")
    path = "/v1/providers/acme/instances"
    whole = client.get(path, headers=_auth(tok)).json()
    assert whole["next_after"] is None  # without limit: everything, as before paging
    ids = [x["instance"] for x in whole["instances"]]
    assert ids == sorted(ids) and len(ids) == 9
    pages = _walk(client, path, "instances", "instance", 2, tok)
    assert [len(p) for p in pages] == [2, 2, 2, 2, 1]
    assert [x for p in pages for x in p] == ids
    paged = [x for n in (0, 5) for x in client.get(
        f"{path}?limit=5" + (f"&after={ids[4]}" if n else ""), headers=_auth(tok)).json()["instances"]]
    assert paged == whole["instances"]  # each instance's days as in the whole list
    exact = _walk(client, path, "instances", "instance", 9, tok)
    assert exact == [ids]  # a last page that is exactly full says so: no empty page after it
    kids = sorted(a.kid for a in agents)
    agent_pages = _walk(client, "/v1/providers/acme/agents", "agents", "kid", 1, tok)
    assert [x for p in agent_pages for x in p] == kids and len(agent_pages) == 3
    # A key that is not in the list still places the page: what sorts after it
    r = client.get(f"{path}?limit=3&after=TR7-05", headers=_auth(tok)).json()
    assert [x["instance"] for x in r["instances"]] == ["TR7-10", "TR7-11", "TR7-12"]
    assert r["next_after"] == "TR7-12"
    assert client.get(f"{path}?after=TR7-99", headers=_auth(tok)).json()["instances"] == []
    # Items added between two pages: one sorting before the cursor is not repeated, later ones come
    first = client.get(f"{path}?limit=4", headers=_auth(tok)).json()
    late = tools.Agent("late")
    tools.enrol(settings, "acme", late, now - 7200)
    beat = late.beat(now - 30, {"TR7-00a": "running", "TR7-99": "running"})
    assert client.post("/v1/heartbeats", content=beat, headers=HEADERS).status_code == 200
    nxt = client.get(f"{path}?limit=100&after={first['next_after']}", headers=_auth(tok)).json()
    got = [x["instance"] for x in first["instances"]] + [x["instance"] for x in nxt["instances"]]
    assert "TR7-00a" not in got and got == ids[:4] + ids[4:] + ["TR7-99"]


def test_pages_of_alerts_join_into_the_whole_list(client, settings, tools) -> None:
    """Alerts have no id: they page by type, then the hash of their content (readapi.alert_key)."""
    from collector.readapi import alert_key

    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog("acme")))
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 7200)
    seen = {f"TR7-9{j}": "running" for j in range(7)}  # none licensed: an unlicensed alert each
    body = "\n".join(a.beat(now - 600 + 60 * i, seen) for i in range(3))
    assert client.post("/v1/heartbeats", content=body, headers=HEADERS).status_code == 200
    tok = _token(settings, "acme")
    path = "/v1/providers/acme/alerts"
    whole = client.get(path, headers=_auth(tok)).json()
    assert whole["next_after"] is None  # without limit or after: the whole list in its own order
    found = whole["alerts"]
    assert len(found) >= 7 and [x for x in found if x["type"] == "unlicensed"]
    pages, after = [], None
    for _ in range(50):  # bounded: a cursor that does not move fails the test, not hangs it
        q = f"{path}?limit=3" + ("" if after is None else f"&after={after}")
        got = client.get(q, headers=_auth(tok)).json()
        pages.append(got["alerts"])
        after = got["next_after"]
        if after is None:
            break
        assert after == alert_key(pages[-1][-1]) and len(after) <= 256
    joined = [x for p in pages for x in p]
    assert sorted(joined, key=alert_key) == joined and len(pages) == -(-len(found) // 3)
    assert sorted(map(alert_key, joined)) == sorted(map(alert_key, found))  # each once, none lost
    assert all(len(p) == 3 for p in pages[:-1])


def test_an_alert_keeps_its_place_in_a_walk_while_its_content_changes(client, settings, tools) -> None:
    """A silent agent's alert names its last heartbeat, which moves when the agent sends one that
    is still too old: the alert is the same one, with the same paging key, so a walk of pages
    started before the change holds it exactly once (keyed by its content, it could appear twice
    or not at all)."""
    from collector.readapi import alert_key

    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog("acme")))
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 7200)
    seen = {f"TR7-9{j}": "running" for j in range(5)}  # none licensed: an unlicensed alert each
    body = a.beat(now - 600, seen, interval=60)  # silent after 180 s
    assert client.post("/v1/heartbeats", content=body, headers=HEADERS).status_code == 200
    tok = _token(settings, "acme")
    path = "/v1/providers/acme/alerts"

    def silent() -> dict:
        found = client.get(path, headers=_auth(tok)).json()["alerts"]
        return next(x for x in found if x["type"] == "silent_agent")

    before = silent()
    first = client.get(f"{path}?limit=2", headers=_auth(tok)).json()
    assert client.post("/v1/heartbeats", content=a.beat(now - 500, seen, interval=60),
                       headers=HEADERS).status_code == 200
    for _ in range(100):  # the pages' cache answers with the last result while it recomputes
        after = silent()
        if after != before:
            break
        time.sleep(0.05)
    assert after["last_heartbeat"] != before["last_heartbeat"] and after["agent"] == a.kid
    assert alert_key(after) == alert_key(before)
    pages, cursor = [first["alerts"]], first["next_after"]
    for _ in range(50):
        got = client.get(f"{path}?limit=2&after={cursor}", headers=_auth(tok)).json()
        pages.append(got["alerts"])
        cursor = got["next_after"]
        if cursor is None:
            break
    joined = [alert_key(x) for p in pages for x in p]
    whole = [alert_key(x) for x in client.get(path, headers=_auth(tok)).json()["alerts"]]
    assert sorted(joined) == sorted(whole) and len(set(whole)) == len(whole)  # each once


def test_an_alerts_key_is_what_names_it_not_what_changes() -> None:
    from collector.readapi import alert_key

    same = [
        ({"type": "silent_agent", "agent": "k1", "name": "a", "last_heartbeat": "T1"},
         {"type": "silent_agent", "agent": "k1", "name": "b", "last_heartbeat": "T2"}),
        ({"type": "unlicensed", "instance": "i", "hours": 3},
         {"type": "unlicensed", "instance": "i", "hours": 4}),
        ({"type": "clone", "instance": "i", "hour": "H", "until": "U1", "hours": 1, "vms": ["a", "b"]},
         {"type": "clone", "instance": "i", "hour": "H", "until": "U2", "hours": 2, "vms": ["a", "b"]}),
        ({"type": "fork_across_months", "agent": "k", "month_before": "2026-11", "seqs": [3]},
         {"type": "fork_across_months", "agent": "k", "month_before": "2026-11", "seqs": [3, 4]}),
    ]
    for x, y in same:
        assert alert_key(x) == alert_key(y)
    apart = [
        ({"type": "silent_agent", "agent": "k1"}, {"type": "silent_agent", "agent": "k2"}),
        ({"type": "fork", "agent": "k", "seq": 1}, {"type": "fork", "agent": "k", "seq": 2}),
        ({"type": "fork", "agent": "k", "seq": 1}, {"type": "break", "agent": "k", "seq": 1}),
        ({"type": "clone", "instance": "i", "hour": "H1", "vms": ["a", "b"]},
         {"type": "clone", "instance": "i", "hour": "H2", "vms": ["a", "b"]}),
        ({"type": "over_capacity", "instance": "i", "license": "L1", "customer": "c"},
         {"type": "over_capacity", "instance": "i", "license": "L2", "customer": "c"}),
    ]
    for x, y in apart:
        assert alert_key(x) != alert_key(y)


def test_limits_out_of_range_are_refused_with_where_and_why(client, settings, tools) -> None:
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog("acme")))
    tok = _token(settings, "acme")
    for route in ("instances", "agents", "alerts"):
        for bad in ("0", "-1", str(MAX_LIMIT + 1), "ten"):
            r = client.get(f"/v1/providers/acme/{route}?limit={bad}", headers=_auth(tok))
            assert r.status_code == 422, (route, bad)
            assert r.json()["detail"][0]["loc"] == ["query", "limit"]
        r = client.get(f"/v1/providers/acme/{route}?after={'x' * 257}", headers=_auth(tok))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "after"]
        ok = client.get(f"/v1/providers/acme/{route}?limit={MAX_LIMIT}", headers=_auth(tok))
        assert ok.status_code == 200 and ok.json()["next_after"] is None


def test_page_of_a_sorted_list() -> None:
    items = ["b", "d", "f", "h"]
    assert page(items, str, None, None) == (items, None)
    assert page(items, str, 2, None) == (["b", "d"], "d")
    assert page(items, str, 2, "d") == (["f", "h"], None)
    assert page(items, str, 2, "c") == (["d", "f"], "f")
    assert page(items, str, 4, None) == (items, None)
    assert page(items, str, 1, "h") == ([], None)
    assert page(items, str, 1, "a") == (["b"], "b")
