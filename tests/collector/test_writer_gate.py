"""SQLite writers across processes queue on a flock beside the database (collector/db.py _WriterGate)."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import sqlalchemy as sa

from collector import db


def test_a_write_waits_for_another_process_holding_the_gate_and_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.write_tx(engine, lambda c: c.exec_driver_sql("CREATE TABLE t (who TEXT)"))
    held, release = tmp_path / "held", tmp_path / "release"
    # The other process takes the gate and writes only when told to: our write must come after.
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from collector import db
        engine = db.make_engine("sqlite:///{path}")
        with db._writer_gate(engine):  # the gate only: SQLite itself is not locked yet
            Path("{held}").touch()
            while not Path("{release}").exists():
                time.sleep(0.01)
            db.write_tx(engine, lambda c: c.exec_driver_sql("INSERT INTO t VALUES ('other')"))
    """)
    other = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    try:
        while not held.exists():
            assert other.poll() is None, "the other process ended before taking the gate"
        # It holds the gate, not SQLite's lock: ours can only be waiting on the flock.
        done = threading.Event()

        def ours() -> None:
            db.write_tx(engine, lambda c: c.exec_driver_sql("INSERT INTO t VALUES ('ours')"))
            done.set()

        t = threading.Thread(target=ours)
        t.start()
        assert not done.wait(0.3)
        release.touch()
        t.join(30)
        assert done.is_set()
        assert other.wait(30) == 0
    finally:
        other.kill()
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT who FROM t ORDER BY rowid")).scalars().all() == ["other", "ours"]


def test_the_gate_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with db._writer_gate(engine), db._writer_gate(engine):
        pass
    # and released: a write still goes through
    db.write_tx(engine, lambda c: c.exec_driver_sql("CREATE TABLE t (x INT)"))


def test_without_the_gate_file_writes_still_go_through(tmp_path: Path, caplog) -> None:
    # e.g. a directory the service cannot create files in: SQLite's own lock is then the only one
    path = tmp_path / "c.db"
    (tmp_path / "c.db.write.lock").symlink_to(tmp_path / "missing" / "x")
    engine = db.make_engine(f"sqlite:///{path}")
    db.write_tx(engine, lambda c: c.exec_driver_sql("CREATE TABLE t (x INT)"))
    db.write_tx(engine, lambda c: c.exec_driver_sql("INSERT INTO t VALUES (1)"))
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 1
    assert "writer_gate_unavailable" in caplog.text
