"""Structured logs to stderr: one `key=value` line per event, journald-friendly (no timestamps:
journald adds its own; set TR7_LOG_TIME=1 to add them when running outside systemd)."""

import logging
import os
import sys


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        head = f"level={record.levelname.lower()} logger={record.name}"
        if (os.environ.get("TR7_LOG_TIME") or "0").lower() not in ("0", "false", "no", "off"):
            head = f"time={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {head}"
        line = f"{head} {msg}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    wanted = os.environ.get("TR7_LOG_LEVEL", level).upper()
    if wanted not in LEVELS:  # a typo in the unit's environment must not stop the agent (restart loop)
        root.setLevel(level)
        logging.getLogger("tr7.agent").warning("event=bad_log_level TR7_LOG_LEVEL=%r: one of %s; using %s",
                                               wanted, ", ".join(LEVELS), level)
    else:
        root.setLevel(wanted)
    # APScheduler logs every run at INFO: too chatty at a 1 s interval, its warnings still show.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Vendor SDKs log request and response bodies at DEBUG: botocore wrote an assumed role's
    # SecretAccessKey and SessionToken into the journal under TR7_LOG_LEVEL=DEBUG (and Azure's
    # logs every request at INFO). Their warnings still show; the agent's own lines are what
    # the level is for.
    for sdk in ("botocore", "boto3", "urllib3", "s3transfer", "azure", "msal", "pyVmomi", "proxmoxer",
                "winrm", "requests_ntlm", "spnego", "httpcore"):
        logging.getLogger(sdk).setLevel(max(logging.WARNING, root.level))
