"""`tr7-audit`: verify or summarise an audit bundle offline (heartbeat-v1.md §6); follow key hand-overs."""

import argparse
import io
import json
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from audit.bundle import BundleError, NotABundle
from audit.progress import StderrProgress
from protocol.timefmt import format_time

# heartbeat-v1.md §6: 0 only when every check holds, otherwise 1; 2 is this tool's own usage
# error (bad arguments, DIR neither a directory nor an archive), never a verdict on the bundle.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_EXIT_HELP = ("exit status: 0 every check holds (findings allowed); 1 a check failed, including a "
              "directory that holds no manifest.json or an archive that cannot be read; 2 command-line "
              "error (bad arguments, DIR is neither a directory nor a .tar.gz)")


def _version() -> str:
    try:
        return version("tr7-meter")
    except PackageNotFoundError:
        return "unknown"


def _verify(args: argparse.Namespace) -> int:
    from audit.checks import UNSIGNED
    from audit.verify import verify_bundle

    started = time.monotonic()
    report = verify_bundle(args.dir, progress=StderrProgress(args.quiet), workers=args.workers,
                           collector_key=args.collector_key, origin=args.origin)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return EXIT_OK if report.ok else EXIT_FAILED
    for f in report.errors:
        print(f)
    if not args.quiet:
        for f in report.notes:
            print(f"{f} [finding, not a failure]")
    verdict = "OK" if report.ok else f"FAILED ({len(report.errors)} failures)"
    if not args.quiet and args.collector_key is None:
        # The bundle's own collector.pub proves only that someone holding some key signed it.
        print("note: collector.pub was not compared with the collector's published key "
              "(--collector-key VKEY): a bundle re-signed with another key would also pass",
              file=sys.stderr)
    if not args.quiet:
        print("note: taken as given, signed by no one: " + "; ".join(f"{name} ({what})" for name, what
              in UNSIGNED) + ". Hold them against the provider's own records (README: What exit 0 does "
              "not prove)", file=sys.stderr)
        print(f"{args.dir}: {report.lines} heartbeats, {len(report.notes)} findings: {verdict} "
              f"in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def _show(args: argparse.Namespace) -> int:
    from audit.show import summary

    try:
        text = summary(args.dir)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # show reads the documents as stored; a damaged one is verify's business to explain.
        # ArithmeticError: decimal.Overflow of an amount such as "1E+1000000"
        print(f"tr7-audit: cannot summarise {args.dir}: malformed document ({exc!r}); run verify",
              file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(text)
    return EXIT_OK


def _handover(args: argparse.Namespace) -> int:
    """Follow hand-over statements from a pinned key; print the key they lead to."""
    from protocol.keyhandover import open_handover
    from protocol.note import MAX_NOTE_CHARS, NoteError

    key = args.collector_key
    for path in args.statements:
        try:
            with open(path, encoding="utf-8") as f:
                step = open_handover(f.read(MAX_NOTE_CHARS + 1), key)  # longer: refused, not read whole
        except (OSError, UnicodeDecodeError, NoteError) as exc:
            print(f"tr7-audit: {path}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"{path}: {step.old} -> {step.new} at {format_time(step.at)} (origin {step.origin})",
              file=sys.stderr)
        key = step.new
    print(key)
    return EXIT_OK


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _origin(text: str) -> str:
    """--origin: one non-empty line without a trailing '/' (the provider and month follow one)."""
    if not text or text != text.strip() or "\n" in text or text.endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a collector origin such as collector.example.com")
    return text


def _vkey(text: str) -> str:
    """--collector-key: a note verifier key, checked before any bundle or statement is read (a
    mistyped key is the command line's error, exit 2, not a failure of the bundle)."""
    from protocol.note import NoteError, NoteVerifier

    try:
        return NoteVerifier.from_vkey(text.strip()).vkey()
    except NoteError as exc:
        raise argparse.ArgumentTypeError(f"not a note verifier key: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tr7-audit", description=__doc__, epilog=_EXIT_HELP)
    parser.add_argument("--version", action="version", version=f"tr7-audit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every rule of heartbeat-v1.md §6; exit 0 only if all hold",
                       epilog=_EXIT_HELP)
    v.add_argument("dir", help="the bundle directory, or its .tar.gz (the web's download, export --compress)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--quiet", action="store_true", help="print failures only, no progress or findings")
    v.add_argument("--collector-key", metavar="VKEY", type=_vkey,
                   help="the collector's note verifier key as published; collector.pub must equal it")
    v.add_argument("--origin", metavar="ORIGIN", type=_origin,
                   help="the collector origin its checkpoints name (<ORIGIN>/<provider>/<month>), for a "
                        "collector whose key is not named after it (default: collector.pub's key name)")
    v.add_argument("--workers", type=_positive, default=None, help="processes for signatures (default: auto)")
    v.set_defaults(func=_verify)
    h = sub.add_parser("handover", help="check the collector's key rotation statements from a key you "
                       "trust; print the key they hand over to (for --collector-key)",
                       epilog="exit status: 0 every statement hands over, the last key printed; 1 a "
                              "statement does not (named) or cannot be read; 2 command-line error")
    h.add_argument("--collector-key", metavar="VKEY", required=True, type=_vkey,
                   help="the collector's verifier key you trust (the one the first statement retires)")
    h.add_argument("statements", nargs="+", metavar="STATEMENT",
                   help="files, each the statement `tr7-collector key rotate` printed, oldest first")
    h.set_defaults(func=_handover)
    s = sub.add_parser("show", help="summarise the bundle's documents: customers, chains, checkpoints")
    s.add_argument("dir", help="the bundle directory, or its .tar.gz")
    s.set_defaults(func=_show)
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        # An auditor's terminal or pipe may not be UTF-8 (Windows' cp1252, a Latin-1 locale): an
        # agent or customer name it cannot encode is written escaped, not a traceback that cuts
        # the report short.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        return int(args.func(args))
    except NotABundle as exc:  # show only: verify reports it as a failed check
        print(f"tr7-audit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BundleError as exc:
        print(f"tr7-audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
