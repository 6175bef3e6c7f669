"""`tr7-agent rejected`: what the collector refused, listed, written out with its signed token, and
cleared from `status` once an operator has dealt with it (before, it stayed there for good)."""

import json
from pathlib import Path

from conftest import run_cli, spooled_state, write_config

from protocol.heartbeat import parse_unverified


def _rejected_state(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A configuration whose spool holds ``n`` heartbeats, the first ``n - 1`` rejected as the
    shipper records them."""
    state, _key, spool = spooled_state(tmp_path, n)
    rows = spool.batch()
    spool.settle([(row, "rejected", f"key.window: time is before the key's enrolment ({row.seq})")
                  for row in rows[:-1]])
    spool.close()
    cfg = write_config(tmp_path / "agent.toml", {"state_dir": str(state)},
                       [{"name": "lab", "platform": "kvm", "instances": 1}])
    return cfg, state


def test_listed_written_with_their_tokens_then_cleared(tmp_path: Path) -> None:
    cfg, _state = _rejected_state(tmp_path, 4)
    shown = run_cli("rejected", "--config", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert "3 rejected heartbeats" in shown.stdout and "key.window" in shown.stdout
    status = run_cli("status", "--config", str(cfg))
    assert "`tr7-agent rejected` lists them" in status.stdout

    # clearing drops signed evidence: only once it is written somewhere
    refused = run_cli("rejected", "--config", str(cfg), "--clear")
    assert refused.returncode == 2 and "--clear needs --out FILE" in refused.stderr
    out = tmp_path / "rejected.jsonl"
    done = run_cli("rejected", "--config", str(cfg), "--out", str(out), "--clear", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["cleared"] == 3 and [r["seq"] for r in answer["rejected"]] == [1, 2, 3]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [parse_unverified(x["token"]).seq for x in lines] == [1, 2, 3]  # the signed heartbeats
    assert all(x["reason"].startswith("key.window") for x in lines)

    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["rejected"] == {"count": 0, "reasons": {}}
    assert status["spool_depth"] == 1  # the unshipped heartbeat is untouched
    assert "no rejected heartbeats" in run_cli("rejected", "--config", str(cfg)).stdout


def test_an_existing_file_is_not_overwritten_and_nothing_is_cleared(tmp_path: Path) -> None:
    cfg, _state = _rejected_state(tmp_path, 3)
    out = tmp_path / "earlier.jsonl"
    out.write_text("the first run's evidence\n")
    res = run_cli("rejected", "--config", str(cfg), "--out", str(out), "--clear")
    assert res.returncode == 1 and "exists: choose another file" in res.stderr
    assert out.read_text() == "the first run's evidence\n"
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["rejected"]["count"] == 2
    # /dev/null is how an operator drops them on purpose
    assert run_cli("rejected", "--config", str(cfg), "--out", "/dev/null", "--clear").returncode == 0
    assert json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)["rejected"]["count"] == 0


def test_only_the_rows_written_out_are_cleared(tmp_path: Path) -> None:
    # the service may set another heartbeat aside between the listing and the delete
    _state, _key, spool = spooled_state(tmp_path, 3)
    rows = spool.batch()
    spool.settle([(rows[0], "rejected", "signature"), (rows[1], "rejected", "signature")])
    listed = spool.rejected_rows()
    spool.settle([(rows[2], "rejected", "time.future")])  # after the listing
    assert spool.drop_rejected(r[0] for r in listed) == 2
    assert [r[2] for r in spool.rejected_rows()] == [3]
    spool.close()


def test_no_spool_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    cfg = write_config(tmp_path / "agent.toml", {"state_dir": str(state)},
                       [{"name": "lab", "platform": "kvm", "instances": 1}])
    res = run_cli("rejected", "--config", str(cfg))
    assert res.returncode == 1 and "no spool at" in res.stderr
    assert not (state / "spool.db").exists()
