"""Secrets for adapter configs: inline, from a file, or from systemd credentials."""

import os
from pathlib import Path

# The packaged unit hands this directory to the service as credentials named tr7_<file>
# (LoadCredential=tr7:/etc/tr7-agent/credentials); TR7_AGENT_CREDENTIALS names another.
UNIT_PREFIX = "tr7_"
UNIT_DIR = "/etc/tr7-agent/credentials"


class SecretError(ValueError):
    pass


def readable_file(path: str, what: str) -> str:
    """``path`` when it is a file this process can read; else SecretError naming ``what``. For the
    CA bundles the SDKs open at their first request, where a missing one came out as a bare
    OSError ("internal error") or as a sign-in refused."""
    try:
        with open(path, "rb"):
            return path
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path}: {exc.strerror}") from None


def read_secret(value: str | None, file: str | None, what: str) -> str | None:
    """Return the secret; a relative ``file`` is looked up in $CREDENTIALS_DIRECTORY first, then
    as a path, then (a name ``tr7_X``) as /etc/tr7-agent/credentials/X, which the unit loads: the
    operator's `tr7-agent check` and `enroll` from a shell read the file the service would get.

    Trailing newlines are stripped (files written by `echo` have one); other whitespace is kept.
    """
    if value is not None and file is not None:
        raise SecretError(f"{what}: give the secret inline or as a file, not both")
    if file is None:
        return value
    path = Path(file)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    tried = [path]
    if not path.is_absolute() and creds:
        tried.insert(0, Path(creds) / path)
    if not path.is_absolute() and path.name.startswith(UNIT_PREFIX) and len(path.parts) == 1:
        unit_dir = Path(os.environ.get("TR7_AGENT_CREDENTIALS") or UNIT_DIR)
        tried.append(unit_dir / path.name[len(UNIT_PREFIX):])
    seen = {p: _there(p) for p in tried}
    found = next((p for p in tried if seen[p]), None) or next((p for p in tried if seen[p] is None), tried[0])
    try:
        return found.read_text(encoding="utf-8").rstrip("\r\n")
    except PermissionError as exc:
        # /etc/tr7-agent/credentials is root's: the unit hands its files over (LoadCredential=)
        raise SecretError(
            f"{what}: cannot read secret file {found}: permission denied; run this as root (it reads "
            "what the service would be given) or give the file to the user you run as") from exc
    except OSError as exc:
        # Every place looked in: a missing tr7_<name> is a file to put in the credentials directory.
        where = ", ".join(map(str, tried))
        raise SecretError(
            f"{what}: cannot read secret file {file} (looked for {where}): {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise SecretError(f"{what}: secret file {found} is not UTF-8 text (byte {exc.start})") from None


def _there(path: Path) -> bool | None:
    """Whether ``path`` exists; None in a directory we may not enter: read when no other place has
    the file, it says why."""
    try:
        return path.exists()
    except PermissionError:  # Python 3.11's exists() raises on EACCES
        return None
