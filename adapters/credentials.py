"""Secrets for adapter configs: inline, from a file, or from systemd credentials."""

import os
from pathlib import Path

# The packaged unit hands this directory to the service as credentials named tr7_<file>
# (LoadCredential=tr7:/etc/tr7-agent/credentials); TR7_AGENT_CREDENTIALS names another.
UNIT_PREFIX = "tr7_"
UNIT_DIR = "/etc/tr7-agent/credentials"


class SecretError(ValueError):
    pass


def _outside_the_service(name: Path) -> Path | None:
    """Where a credential name of the unit's is on disk when no $CREDENTIALS_DIRECTORY has it: the
    operator's `tr7-agent check` and `enroll` from a shell read the file the service would get
    (they failed on every `*_file` secret: `tr7_vc-password` exists only inside the service)."""
    if len(name.parts) != 1 or not name.name.startswith(UNIT_PREFIX):
        return None
    path = Path(os.environ.get("TR7_AGENT_CREDENTIALS") or UNIT_DIR) / name.name[len(UNIT_PREFIX):]
    return path if path.exists() else None


def read_secret(value: str | None, file: str | None, what: str) -> str | None:
    """Return the secret; a relative ``file`` is looked up in $CREDENTIALS_DIRECTORY first, then
    as a path, then (a name ``tr7_X``) as /etc/tr7-agent/credentials/X, which the unit loads.

    Trailing newlines are stripped (files written by `echo` have one); other whitespace is kept.
    """
    if value is not None and file is not None:
        raise SecretError(f"{what}: give the secret inline or as a file, not both")
    if file is None:
        return value
    path = Path(file)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        path = Path(creds) / path
    elif not path.is_absolute() and not path.exists():
        path = _outside_the_service(path) or path
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"{what}: cannot read secret file {path}: {exc.strerror}") from exc
