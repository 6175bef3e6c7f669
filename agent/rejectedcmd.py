"""`tr7-agent rejected`: the heartbeats the collector rejected, listed, written out and cleared."""

import json
import os
import sys
from pathlib import Path
from typing import IO

from agent.commands import existing_spool, give_to_state_owner
from agent.config import Config
from agent.spooltypes import SpoolError
from protocol.timefmt import format_time


def rejected(config: Config, as_json: bool, out: Path | None, clear: bool) -> int:
    """List what was set aside; ``out``: write each as a JSON line (its signed token kept);
    ``clear``: then delete those from the spool. A rejected heartbeat is never resent and stayed
    in `status` for good: an operator who had read why could not acknowledge it."""
    if clear and out is None:
        print("rejected: --clear needs --out FILE: they are signed evidence of what the collector "
              "refused; write them somewhere first (--out /dev/null to drop them)", file=sys.stderr)
        return 2
    spool = existing_spool(config, "rejected")
    if spool is None:
        return 1
    try:
        rows = spool.rejected_rows()
        if out is not None:
            _write(out, rows)
        cleared = spool.drop_rejected(r[0] for r in rows) if clear else 0
    except (SpoolError, OSError) as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 1
    finally:
        spool.close()
        # run as root (the state directory is the service user's): a WAL file root made would
        # stop the service from opening its spool
        db = config.agent.spool_path
        give_to_state_owner(config.agent.state_dir, *(db.with_name(db.name + x) for x in ("-wal", "-shm")))
    listed = [{"kid": kid, "seq": seq, "at": format_time(at), "reason": reason}
              for _id, kid, seq, at, reason, _token in rows]
    if as_json:
        print(json.dumps({"rejected": listed, "written": str(out) if out else None, "cleared": cleared},
                         indent=2))
        return 0
    _table(sys.stdout, listed)
    if out is not None:
        print(f"written to {out}: {len(rows)} heartbeat{'s' if len(rows) != 1 else ''}")
    if clear:
        print(f"cleared: {cleared}")
    return 0


def _write(out: Path, rows: list[tuple[int, str, int, int, str, str]]) -> None:
    """One JSON object a line, {kid, seq, at, reason, token}, flushed to disk before any clearing.
    /dev/null and other existing non-regular files are written as they are; a regular file that
    exists is not overwritten (a second run would have replaced the first one's evidence)."""
    mode = "w" if out.exists() and not out.is_file() else "x"
    try:
        f = open(out, mode, encoding="ascii", newline="\n")  # noqa: SIM115 (closed below)
    except FileExistsError:
        raise OSError(f"{out} exists: choose another file") from None
    with f:
        for _id, kid, seq, at, reason, token in rows:
            line = {"kid": kid, "seq": seq, "at": format_time(at), "reason": reason, "token": token}
            f.write(json.dumps(line, ensure_ascii=True) + "\n")
        f.flush()
        if out.is_file():
            os.fsync(f.fileno())


def _table(stream: IO[str], listed: list[dict[str, object]]) -> None:
    if not listed:
        print("no rejected heartbeats", file=stream)
        return
    print(f"{'seq':>8}  {'at':20}  {'kid':8}  reason", file=stream)
    for r in listed:
        reason = str(r["reason"]).replace("\n", " ")
        print(f"{r['seq']:>8}  {r['at']:20}  {str(r['kid'])[:8]}  {reason[:200]}", file=stream)
    print(f"{len(listed)} rejected heartbeat{'s' if len(listed) != 1 else ''}", file=stream)
