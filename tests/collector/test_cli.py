"""tr7-collector commands as an operator runs them (subprocess), on SQLite and PostgreSQL."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

from protocol.keys import AgentKey
from protocol.timefmt import format_time, month_bounds, month_of, previous_month


def run(
    data: Path, db_url: str, *args: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(env or {}),
        "TR7_COLLECTOR_DATA_DIR": str(data),
        "TR7_COLLECTOR_DB": db_url,
        "TR7_COLLECTOR_ORIGIN": "cli.test",
    }
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_first_command_creates_key_and_default_sqlite(tmp_path):
    data = tmp_path / "data"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    key = data / "collector.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (data / "collector.db").exists()
    before = key.read_bytes()
    subprocess.run(
        [sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert key.read_bytes() == before  # never replaced


def test_operator_workflow(tmp_path, db_url, tools):
    data = tmp_path / "data"
    cat = tools.catalog()
    f = tmp_path / "catalog.json"
    f.write_text(json.dumps(cat))
    r = run(data, db_url, "apply", str(f))
    assert "customer c1: added" in r.stdout and "license SL-1: added" in r.stdout
    assert "no change" in run(data, db_url, "apply", str(f)).stdout
    cat["licenses"][0]["end"] = "2030-01-01T00:00:00Z"
    cat["customers"].append({"id": "c2", "name": "Zweite AG", "downgraded": []})
    cat["rates"]["hourly"][0]["price"] = "0.0500"
    y = tmp_path / "catalog.yaml"
    y.write_text(yaml.safe_dump(cat))
    out = run(data, db_url, "apply", str(y), "--retroactive").stdout  # the rate reprices this month
    assert (
        "customer c2: added" in out
        and "license SL-1: changed" in out
        and "hourly rate pro/1000: changed" in out
    )
    # YAML is the same catalog as JSON: an unquoted time is its text, judged as JSON's is (it was
    # read as the host's local time), and an unquoted wire time is kept exactly
    z = tmp_path / "zone.yaml"
    z.write_text(y.read_text().replace("'2030-01-01T00:00:00Z'", "2030-01-01 12:00:00"))
    assert "2030-01-01 12:00:00" in z.read_text()
    r = run(data, db_url, "apply", str(z), "--retroactive", ok=False, env={"TZ": "Europe/Berlin"})
    assert r.returncode == 1 and "licenses[0].end: must be a UTC time" in r.stderr
    z.write_text(y.read_text().replace("'2030-01-01T00:00:00Z'", "2030-01-01T00:00:00Z"))
    assert "no change" in run(data, db_url, "apply", str(z)).stdout
    # and a number is one where JSON's grammar says so: 0500 was YAML 1.1's octal 320 (a 400 Mbps
    # capacity then priced at another tier), 1:30 base 60, and both are refused in JSON
    for odd in ("0500", "1:30", "0x1F4"):
        o = tmp_path / "odd.yaml"
        o.write_text(y.read_text().replace("bandwidth_mbps: 500", f"bandwidth_mbps: {odd}"))
        r = run(data, db_url, "apply", str(o), "--retroactive", ok=False)
        assert r.returncode == 1 and "licenses[0].capacity[0].bandwidth_mbps" in r.stderr, (odd, r.stderr)
    cat["licenses"][0]["model"] = "rental"
    f.write_text(json.dumps(cat))
    bad = run(data, db_url, "apply", str(f), ok=False)
    assert bad.returncode == 1 and "licenses[0].model" in bad.stderr

    key = AgentKey.generate()
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    kid = run(
        data,
        db_url,
        "agent",
        "add",
        "--provider",
        "acme",
        "--name",
        "dc1",
        "--public-key",
        key.public_b64,
        "--enrolled-at",
        format_time(m0 - 86400),
    ).stdout.strip()
    assert kid == key.kid
    agent = tools.Agent("dc1", key)
    jws = tmp_path / "spool.jws"
    jws.write_text("".join(agent.beat(m0 + i * 1200, {"TR7-0001": "running"}) + "\n" for i in range(30)))
    assert json.loads(run(data, db_url, "import", str(jws)).stdout)["accepted"] == 30
    assert json.loads(run(data, db_url, "import", str(jws)).stdout)["duplicate"] == 30
    # a rejected line is named by its line in the file (the blank one before it counted)
    bad_jws = tmp_path / "bad.jws"
    bad_jws.write_text(jws.read_text().splitlines()[0] + "\n\nnot a jws\n")
    r = run(data, db_url, "import", str(bad_jws), ok=False)
    assert r.returncode == 2 and "line 3: seq None: rejected: jws" in r.stderr
    inv = json.loads(run(data, db_url, "bill", "--provider", "acme", "--month", m).stdout)
    assert inv["lines"][0]["quantity"] == 10 and inv["lines"][0]["amount"] == "0.50"
    csv_text = run(data, db_url, "bill", "--provider", "acme", "--month", m, "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("kind,customer,license") and "0.50" in csv_text
    pdf = tmp_path / "inv.pdf"
    run(data, db_url, "bill", "--provider", "acme", "--month", m, "--format", "pdf", "--out", str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF")

    open_month = month_of(int(time.time()))
    r = run(data, db_url, "close", "--provider", "acme", "--month", open_month, ok=False)
    assert r.returncode == 1 and "not ended" in r.stderr
    assert "at log size 30" in run(data, db_url, "close", "--provider", "acme", "--month", m).stdout
    run(data, db_url, "export", "--provider", "acme", "--month", m, "--out", str(tmp_path / "b"))
    assert (tmp_path / "b" / "closed" / "checkpoint").exists()

    # not back into what the key already logged (and billed): the bundle would fail verify
    r = run(data, db_url, "agent", "revoke", kid, "--at", format_time(m0), ok=False)
    assert r.returncode == 1 and f"logged up to {format_time(m0 + 29 * 1200)}" in r.stderr
    run(data, db_url, "agent", "revoke", kid, "--at", format_time(m0 + 29 * 1200 + 1))
    listed = json.loads(run(data, db_url, "agent", "list").stdout)
    assert listed[0]["revoked_at"] == format_time(m0 + 29 * 1200 + 1)
    tok = run(data, db_url, "agent", "token", "--provider", "acme", "--ttl", "2h").stdout.strip()
    assert tok.startswith("tr7e_")
    api = run(data, db_url, "token", "add", "--provider", "acme", "--role", "auditor").stdout.strip()
    vendor = run(data, db_url, "token", "add", "--vendor").stdout.strip()
    assert api.startswith("tr7_") and vendor.startswith("tr7_") and api != vendor
    # typos are not new tenants; a vendor token has no role; a TTL stays a sane integer
    for args, said in (
        (("agent", "token", "--provider", "acmee"), "no provider 'acmee' (known: acme)"),
        (("token", "add", "--provider", "ACME"), "no provider 'ACME' (known: acme)"),
        (("token", "add", "--vendor", "--role", "admin"), "leave out --role"),
        (("agent", "token", "--provider", "acme", "--ttl", "99999999999999999d"), "at most 366d"),
    ):
        r = run(data, db_url, *args, ok=False)
        assert r.returncode in (1, 2) and said in r.stderr, (args, r.stderr)


def test_concurrent_first_start_migrates_once(tmp_path, db_url):
    """Processes starting together on a fresh data directory and database: one key and origin
    (each wrote and renamed one shared temp file, and one crashed), one migration; a data
    directory with another key is then refused (its checkpoints would break the others' bundles)."""
    env = {**os.environ, "TR7_COLLECTOR_DB": db_url, "TR7_COLLECTOR_ORIGIN": "cli.test"}

    def migrate(data: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(data)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    procs = [migrate(tmp_path / "d") for _ in range(4)]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert sorted(x.name for x in (tmp_path / "d").iterdir() if x.name.endswith(".tmp")) == []
    other = migrate(tmp_path / "other")
    _out, err = other.communicate(timeout=300)
    # refused before a key of its own is made: the message says where the key comes from
    assert other.returncode == 1 and "has no collector.key" in err.decode()
    assert "another host on this database" in err.decode()
    assert not (tmp_path / "other" / "collector.key").exists()
    import shutil

    for name in ("collector.key", "origin"):  # as the operator copies them to a second host
        shutil.copy(tmp_path / "d" / name, tmp_path / "other" / name)
    again = migrate(tmp_path / "other")
    assert again.communicate(timeout=300) and again.returncode == 0
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from collector.db import alembic_config, make_engine

    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    engine = make_engine(db_url)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    engine.dispose()


def test_migrate_says_from_which_revision_to_which(tmp_path, db_url, tools):
    """An upgrade from 0001 to the last revision printed "schema up to date", as when nothing was
    done, and `serve` said nothing of it. Found by an upgrade review."""
    from alembic.script import ScriptDirectory

    from collector.db import alembic_config
    from collector.settings import Settings

    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    data = tmp_path / "data"
    assert run(data, db_url, "migrate").stdout.startswith(f"schema created ({head}) on ")
    st = Settings(data, db_url, "cli.test")
    tools.migrate_to(st, "0014_vacuum_after_inserts")
    st.engine.dispose()
    out = run(data, db_url, "migrate").stdout
    assert out.startswith(f"schema upgraded from 0014_vacuum_after_inserts to {head} on "), out
    assert run(data, db_url, "migrate").stdout.startswith(f"schema up to date ({head}) on ")
    if db_url.startswith("sqlite"):
        # On SQLite each migration commits on its own, as before the revision was read: reading it
        # on the upgrade's connection made alembic run them all in one transaction (a review), so
        # an interrupted long upgrade lost every step and the WAL held them all.
        import sqlalchemy as sa

        from collector import db

        tools.migrate_to(st, "0014_vacuum_after_inserts")
        commits: list[int] = []
        sa.event.listen(st.engine, "commit", lambda conn: commits.append(1))
        assert db.migrate(st.engine) == ("0014_vacuum_after_inserts", head)
        assert len(commits) >= 3, commits  # 0015, 0016, 0017
