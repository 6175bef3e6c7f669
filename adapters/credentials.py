"""Secrets for adapter configs: inline, from a file, or from systemd credentials."""

import os
from pathlib import Path


class SecretError(ValueError):
    pass


def read_secret(value: str | None, file: str | None, what: str) -> str | None:
    """Return the secret; a relative ``file`` is looked up in $CREDENTIALS_DIRECTORY first.

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
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"{what}: cannot read secret file {path}: {exc.strerror}") from exc
