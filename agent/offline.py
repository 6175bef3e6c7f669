"""Sites without a path to the collector: the key to register by hand, and import results settled."""

import json
import shlex
import sys
from pathlib import Path

from agent.commands import existing_spool, give_to_state_owner
from agent.config import Config
from agent.spooltypes import SpoolError
from agent.startup import StartupError, check_state_dir
from protocol.errors import ProtocolError
from protocol.heartbeat import token_digest
from protocol.keys import load_or_create_private_key

STORED = ("accepted", "duplicate")  # what the collector holds: gone from the spool, as when shipped


def key(config: Config) -> int:
    """Create the key if missing and print what `tr7-collector agent add` needs: `enroll` needs a
    collector to talk to, and an air-gapped site had to dig the public key out with openssl."""
    settings = config.agent
    try:
        check_state_dir(settings.state_dir)
        agent_key, created = load_or_create_private_key(settings.key_path)
    except (StartupError, ProtocolError, OSError, ValueError) as exc:
        print(f"key: {exc}", file=sys.stderr)
        return 1
    give_to_state_owner(settings.state_dir, settings.key_path)
    print(f"kid         {agent_key.kid}{' (new key created)' if created else ''}")
    print(f"public_key  {agent_key.public_b64}")
    print("register it on the collector (once; its heartbeats are rejected until then):")
    # quoted for the shell: a name such as "Lab agent (rack 4)" was split, or a syntax error
    print(f"  tr7-collector agent add --provider PROVIDER --name {shlex.quote(settings.agent_name)} "
          f"--public-key {shlex.quote(agent_key.public_b64)}")
    return 0


def settle(config: Config, results: Path) -> int:
    """Apply `tr7-collector import --results` to the spool: the heartbeats the collector holds
    (accepted or duplicate) leave it, the rejected ones are set aside with their reason, as the
    shipper does with an answer; every other row stays. Without this an air-gapped agent's spool
    grew for good, and each export carried its whole history again."""
    try:
        answers = _read_results(results)
    except (OSError, ValueError) as exc:
        print(f"settle: {results}: {exc}", file=sys.stderr)
        return 1
    spool = existing_spool(config, "settle")
    if spool is None:
        return 1
    stored = rejected = kept = 0
    try:
        # SETTLE_ROWS at a time, each batch settled in its own transaction (a row settles the same
        # however often): reading the whole spool at once took 1.2 GB for a month of 500 instances
        last = 0
        while (rows := spool.batch(limit=SETTLE_ROWS, max_bytes=2**62, after=last)) or spool.any_after(last):
            if not rows:  # a page of damaged rows only, set aside by batch(): read on past it
                continue
            last = rows[-1].id
            outcomes = [(row, *answers[d]) for row in rows if (d := token_digest(row.token)) in answers]
            spool.settle(outcomes)
            done = sum(1 for _row, status, _reason in outcomes if status in STORED)
            stored, rejected = stored + done, rejected + len(outcomes) - done
            kept += len(rows) - len(outcomes)
    except SpoolError as exc:
        print(f"settle: {exc}", file=sys.stderr)
        return 1
    finally:
        spool.close()
    print(json.dumps({"stored": stored, "rejected": rejected, "still_unshipped": kept}))
    return 0


SETTLE_ROWS = 500


def _read_results(path: Path) -> dict[str, tuple[str, str | None]]:
    """digest -> (status, reason) of each line of the results file."""
    out: dict[str, tuple[str, str | None]] = {}
    for n, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            digest, status = r["digest"], r["status"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {n} is not a result of `tr7-collector import --results` ({exc})") from exc
        if status not in (*STORED, "rejected") or not isinstance(digest, str):
            raise ValueError(f"line {n}: status {status!r} is none of accepted, duplicate, rejected")
        out[digest] = (status, r.get("reason"))
    return out
