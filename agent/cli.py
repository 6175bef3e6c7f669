"""`tr7-agent`: run | check | enroll | status | export | key | settle | config sample | config validate."""

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from agent import __version__, logs

DEFAULT_CONFIG = Path("/etc/tr7-agent/agent.toml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tr7-agent", description="Signs heartbeats of running TR7 appliances.")
    p.add_argument("--version", action="version", version=f"tr7-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help=f"configuration file (TOML; default {DEFAULT_CONFIG})")
        return s

    cmd("run", "the service: poll, sign, spool, ship")
    s = cmd("check", "poll every adapter once and print what was seen (signs nothing)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = cmd("enroll", "create the key pair if missing and register it with the collector")
    s.add_argument("--token", required=True, help="one-time enrolment token from the collector")
    s = cmd("status", "key, chain, spool, rejected heartbeats, clock events, collector reachability")
    s.add_argument("--json", action="store_true", help="print JSON (every clock event) instead of text")
    s = cmd("export", "write unshipped heartbeats to a file (sites without a network path)")
    s.add_argument("--out", type=Path, required=True)
    cmd("key", "create the key pair if missing and print its public key for `tr7-collector agent add` "
        "(sites without a network path)")
    s = cmd("settle", "drop from the spool what `tr7-collector import --results FILE` says the collector "
            "holds; set aside what it rejected")
    s.add_argument("--results", type=Path, required=True, help="the FILE written by tr7-collector import")
    s = cmd("rejected", "list the heartbeats the collector rejected; write them out and clear them")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--out", type=Path, help="write each as a JSON line with its signed token (a new file)")
    s.add_argument("--clear", action="store_true", help="then delete them from the spool (needs --out)")
    c = sub.add_parser("config", help="configuration helpers")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="{sample,validate}")
    csub.add_parser("sample", help="print a commented sample configuration")
    v = csub.add_parser("validate", help="check a configuration file; exit 0 only when it can run")
    v.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"configuration file (TOML; default {DEFAULT_CONFIG})")
    return p


def _exit(code: int) -> None:
    """Exit even when an adapter thread hangs in a vendor SDK: the interpreter joins every thread
    that is not a daemon at exit (executors' too), and a scope or connection attempt stuck on a
    frozen endpoint kept a stopped agent alive until systemd's SIGKILL. Everything of ours is
    committed and flushed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "run":
        # A reload asked for while the service is still starting (imports take a second) would
        # kill it silently (SIGHUP's default): ignored until the service installs its handler.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup()
    if args.command == "config" and args.config_command == "sample":
        from agent.sample import sample

        sys.stdout.write(sample())
        return
    from agent.config import ConfigError, load_config, require_adapters

    try:
        config = load_config(args.config)
        if args.command in ("run", "config"):
            # One check for both: only a configuration that can poll something is "valid" (the
            # package's post-install script relies on it, so the commented sample never starts),
            # and `run` signed empty heartbeats for ever with what validate refused.
            require_adapters(config)
    except ConfigError as exc:
        if args.command == "run":  # the service's journal: a key=value line like every other
            logging.getLogger("tr7.agent").critical("event=config_error reason=%r action='not started "
                                                    "(exit 2, which the unit does not restart on)'", str(exc))
        else:
            print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    for warning in config.warnings:  # what an earlier release took, read this one's way
        if args.command == "run":
            logging.getLogger("tr7.agent").warning("event=config_warning reason=%r", warning)
        else:
            print(f"configuration warning: {warning}", file=sys.stderr)
    from agent import commands

    if args.command == "config":
        n = len(config.adapters)
        print(f"{args.config}: ok ({n} adapter{'s' if n != 1 else ''}, interval {config.agent.interval} s)")
        return
    if args.command == "run":
        from agent.service import Service

        _exit(Service(config).serve())
    try:
        if args.command == "check":
            _exit(commands.check(config, args.json))
        elif args.command == "enroll":
            _exit(commands.enroll(config, args.token))
        elif args.command == "status":
            _exit(commands.status(config, args.json))
        elif args.command == "export":
            _exit(commands.export(config, args.out))
        elif args.command == "rejected":
            from agent.rejectedcmd import rejected

            _exit(rejected(config, args.json, args.out, args.clear))
        elif args.command in ("key", "settle"):
            from agent import offline

            _exit(offline.key(config) if args.command == "key" else offline.settle(config, args.results))
    except BrokenPipeError:
        # output piped into `head` and the like: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
