"""The one-shot commands: check, enroll, status, export."""

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import httpx

from adapters.credentials import SecretError
from agent import signedkeys
from agent.collectorlink import redact, redirect_problem
from agent.config import Config
from agent.poller import Poller
from agent.shipper import make_client
from agent.spool import Spool
from agent.spooltypes import SpoolError
from agent.startup import StartupError, check_state_dir
from protocol.errors import ProtocolError
from protocol.keys import load_or_create_private_key, load_private_key, replace_file


def check(config: Config, as_json: bool) -> int:
    """Poll every adapter once; sign nothing. Exit 1 when any adapter failed."""
    poller = Poller(config.adapters)
    try:
        outcome = poller.poll_all()
    finally:
        poller.close()
    if as_json:
        doc: dict[str, object] = {"polls": outcome.polls, "observations": outcome.observations}
        # the whole reason where the heartbeat's is cut short (every failed region of 35, say)
        whole = {a.name: a.diagnostic for a in outcome.adapters if a.diagnostic}
        if whole:
            doc["diagnostics"] = whole
        print(json.dumps(doc, indent=2))
    else:
        rows = [("ADAPTER", "PLATFORM", "OK", "INSTANCES", "SECONDS", "ERROR")]
        for a in outcome.adapters:
            rows.append((a.name, a.platform, "yes" if a.ok else "NO", str(len(a.observations)),
                         f"{a.seconds:.2f}", a.diagnostic or a.error or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
        for o in outcome.observations:
            print(f"  {o['adapter']}: {o['instance']} vm={o['vm']} host={o['host']} state={o['state']}")
    return 0 if all(a.ok for a in outcome.adapters) else 1


def enroll(config: Config, token: str) -> int:
    settings = config.agent
    if not settings.collector:
        print(f"{config.path}: [agent] collector is required to enroll", file=sys.stderr)
        return 2
    try:
        check_state_dir(settings.state_dir)
        key, created = load_or_create_private_key(settings.key_path)
    except (StartupError, ProtocolError, OSError) as exc:
        print(f"enroll: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an emptied or damaged key file (a full disk): `run` says the same
        print(f"enroll: {settings.key_path} is not an agent key ({exc}); move it aside only if it "
              "never signed: its heartbeats' key would be lost", file=sys.stderr)
        return 1
    body = {"token": token, "name": settings.agent_name, "public_key": key.public_b64}
    try:
        with make_client(settings) as client:
            resp = client.post(settings.collector + "/v1/agents/enroll", json=body)
    except httpx.HTTPError as exc:
        print(f"enroll: collector {settings.collector_shown} unreachable: {redact(str(exc))}",
              file=sys.stderr)
        return 1
    except (SecretError, OSError) as exc:  # the token or CA file named by the configuration
        print(f"enroll: {exc}", file=sys.stderr)
        return 1
    moved = redirect_problem(resp, "/v1/agents/enroll")
    if moved is not None:  # a move, not a refusal: "refused" sent operators to their tokens
        print(f"enroll: {moved}", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except (ValueError, AttributeError):  # not JSON, or JSON but no object
            detail = resp.text[:500]
        hint = (f"; is {settings.collector_shown} the collector's base URL?" if resp.status_code in (404, 405)
                else "")
        print(f"enroll refused by the collector (HTTP {resp.status_code}): {detail}{hint}", file=sys.stderr)
        return 1
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):  # a proxy's page, or another service at that URL
        print(f"enroll: {settings.collector_shown} answered 200 with no enrolment (not a JSON object): "
              f"{resp.text[:200]!r}; is this the collector's URL?", file=sys.stderr)
        return 1
    if answer.get("kid") != key.kid:
        print(f"enroll: the collector answered kid {answer.get('kid')!r}, ours is {key.kid}", file=sys.stderr)
        return 1
    record = {"kid": key.kid, "provider": answer.get("provider"), "enrolled_at": answer.get("enrolled_at"),
              "collector": settings.collector_shown, "name": settings.agent_name}
    # root writes here too (README step 4): never through a link the directory's owner planted
    replace_file((json.dumps(record, indent=2) + "\n").encode(), settings.state_dir / "enrollment.json")
    give_to_state_owner(settings.state_dir, settings.key_path, settings.state_dir / "enrollment.json")
    print(f"enrolled: kid {key.kid} provider {record['provider']} at {record['enrolled_at']}"
          f"{' (new key created)' if created else ''}")
    return 0


def give_to_state_owner(state_dir: Path, *paths: Path) -> None:
    """Run as root (which reads the credentials the unit loads, token_file among them), enroll
    gives what it wrote to the state directory's owner, the service user: a root-owned agent.key
    stopped the service at every start, in a restart loop."""
    if os.geteuid() != 0:
        return
    owner = os.lstat(state_dir)
    if owner.st_uid == 0:
        return
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        # Never through a link: the directory's owner could plant one to a file of root's, which
        # root would then hand over. A link swapped in after the lstat is changed itself, not followed.
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0:
            os.chown(p, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _collector_health(config: Config) -> dict[str, Any]:
    url, shown = config.agent.collector, config.agent.collector_shown
    if not url:
        return {"url": None, "reachable": False, "detail": "no collector configured"}
    try:
        with make_client(config.agent, timeout=5.0) as client:
            resp = client.get(url + "/healthz")
        moved = redirect_problem(resp, "/healthz")
        detail = moved or f"HTTP {resp.status_code}"  # a move names the address to configure
        return {"url": shown, "reachable": resp.status_code == 200, "detail": detail}
    except (httpx.HTTPError, OSError, SecretError) as exc:
        return {"url": shown, "reachable": False, "detail": redact(str(exc)) or type(exc).__name__}


def state_problem(state_dir: Path) -> str | None:
    """Why this user cannot read the agent's state directory, or None. An operator's shell is not
    the service user (tr7-agent), whose directory is mode 0700: status gave a traceback there."""
    try:
        os.listdir(state_dir)
    except FileNotFoundError:
        return f"state directory {state_dir} does not exist: the agent has not run with this configuration"
    except NotADirectoryError:
        return f"state directory {state_dir} is not a directory"
    except PermissionError:
        return (f"state directory {state_dir}: permission denied: run this as root or as the service "
                f"user (runuser -u tr7-agent -- tr7-agent ...)")
    except OSError as exc:
        return f"state directory {state_dir}: {exc.strerror or exc}"
    return None


_EMPTY: dict[str, Any] = {
    "last_poll": None, "last_shipped_seq": None, "spool_depth": 0, "oldest_unshipped_age_s": None,
    "spool_bytes": 0, "rejected": {"count": 0, "reasons": {}}, "clock_events": []}


def status(config: Config, as_json: bool) -> int:
    settings = config.agent
    out: dict[str, Any] = {"kid": None, "enrolled": None, "last_seq": 0}
    problem = state_problem(settings.state_dir)
    if problem is not None:
        # every field as for an agent that never ran, and the reason first in the text form
        return _print_status({"state_error": problem, **out, **_EMPTY}, config, as_json, 1)
    code = 0
    try:
        key = load_private_key(settings.key_path) if settings.key_path.exists() else None
    except (ProtocolError, OSError, ValueError) as exc:
        key, out["key_error"], code = None, str(exc), 1
    if key is not None:
        out["kid"] = key.kid
    enrollment = settings.state_dir / "enrollment.json"
    try:
        out["enrolled"] = json.loads(enrollment.read_text()) if enrollment.exists() else None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        out["enrolled"], out["enrollment_error"], code = None, f"{enrollment}: unreadable: {exc}", 1
    if settings.spool_path.exists():
        try:
            spool = Spool(settings.spool_path)
            try:
                out.update(spool.stats())
                out["last_seq"] = spool.head(key.kid).seq if key else 0
            finally:
                spool.close()
        except SpoolError as exc:
            out["spool_error"], code = str(exc), 1
    else:
        out.update(_EMPTY)
    older = None if key is None or "spool_error" in out else signedkeys.behind(
        settings.state_dir, key.kid, out["last_seq"], settings.spool_path)
    if older is not None:  # an older copy of spool.db: what `run` refuses to start with too
        out["chain_error"], code = older, 1
    if key is not None and out["last_seq"] == 0 and "spool_error" not in out:
        try:  # what `run` refuses to start with (service.start): this is no new agent
            signedkeys.check(settings.state_dir, key.kid, 0, settings.spool_path)
        except signedkeys.LostChain as exc:
            out["chain_error"], code = str(exc), 1
    return _print_status(out, config, as_json, code)


def _print_status(out: dict[str, Any], config: Config, as_json: bool, code: int) -> int:
    out["collector"] = _collector_health(config)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            if k == "clock_events" and isinstance(v, list) and len(v) > 1:
                # up to 20 events made one line of thousands of characters: the count and the latest
                v = f"{len(v)} recorded (--json lists them); latest: {json.dumps(v[0])}"
            hint = " (`tr7-agent rejected` lists them)" if k == "rejected" and v.get("count") else ""
            print(f"{k:24} {v if not isinstance(v, dict | list) else json.dumps(v)}{hint}")
    return code


def existing_spool(config: Config, command: str) -> Spool | None:
    """The spool a command reads or settles, or None (the reason printed): never made here, as a
    spool.db root made before the service's first start would not be the service user's."""
    problem, path = state_problem(config.agent.state_dir), config.agent.spool_path
    if problem is None and not path.exists():
        problem = f"no spool at {path}: nothing has been signed with this configuration"
    if problem is not None:
        print(f"{command}: {problem}", file=sys.stderr)
        return None
    try:
        return Spool(path)
    except SpoolError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def export(config: Config, out: Path) -> int:
    """Write unshipped heartbeats, one compact JWS a line in seq order; the spool keeps them."""
    spool = existing_spool(config, "export")
    if spool is None:
        return 1
    # A new or regular file is written beside and renamed over (no half-written export); anything
    # else is written in place: renaming over /dev/null or the /dev/stdout link replaced the device
    # (for every program, as root) and wrote nothing where asked.
    in_place = out.is_symlink() or (out.exists() and not out.is_file())
    tmp = out if in_place else out.with_name(out.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="ascii", newline="\n") as f:
            for token in spool.unshipped():
                f.write(token + "\n")
                n += 1
            f.flush()
            if not in_place:
                os.fsync(f.fileno())
        if not in_place:
            os.replace(tmp, out)
    except OSError as exc:
        if not in_place:
            tmp.unlink(missing_ok=True)  # no FILE.tmp left behind
        print(f"export: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        spool.close()
    # to stderr when the heartbeats themselves go to stdout
    print(f"exported {n} unshipped heartbeats to {out} (they stay in the spool until shipped)",
          file=sys.stderr if in_place else sys.stdout)
    if spool.damaged:
        print(f"export: {len(spool.damaged)} damaged rows could not be read and are not in {out} "
              f"(seq {', '.join(map(str, spool.damaged[:20]))}{' ...' if len(spool.damaged) > 20 else ''})",
              file=sys.stderr)
        return 1
    return 0
