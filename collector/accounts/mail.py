"""Reminder and downgrade notices through the configured SMTP server (env TR7_SMTP_*)."""

import os
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from collector.accounts import machine as m
from collector.accounts.address import InvalidEmail, check_email
from collector.accounts.store import Mailer
from protocol.timefmt import format_time

ENV_HOST, ENV_PORT, ENV_FROM = "TR7_SMTP_HOST", "TR7_SMTP_PORT", "TR7_SMTP_FROM"
ENV_USER, ENV_PASSWORD, ENV_STARTTLS = "TR7_SMTP_USER", "TR7_SMTP_PASSWORD", "TR7_SMTP_STARTTLS"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "billing@localhost"
    user: str | None = None
    password: str | None = None
    starttls: bool = False

    @classmethod
    def from_env(cls) -> "SmtpSettings | None":
        host = os.environ.get(ENV_HOST)
        if not host:
            return None
        port = os.environ.get(ENV_PORT) or "25"
        if not port.strip().isdigit() or not 0 < int(port) < 65536:
            from collector.settings import SetupError

            raise SetupError(f"{ENV_PORT}={port!r} must be a port number (1-65535)")
        return cls(
            host,
            int(port),
            os.environ.get(ENV_FROM) or "billing@localhost",
            os.environ.get(ENV_USER) or None,
            os.environ.get(ENV_PASSWORD) or None,
            (os.environ.get(ENV_STARTTLS) or "").lower() in ("1", "true", "yes"),
        )


def message(
    sender: str, to: str, provider: str, customer: str, act: m.Action, acc: m.Account
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, to
    deadline = format_time(acc.downgrade_at) if acc.downgrade_at is not None else "-"
    if act.kind == "reminder":
        msg["Subject"] = f"Payment reminder {act.number}: TR7 services of {customer} ({provider})"
        body = (
            f"A payment for account {customer} at {provider} failed on "
            f"{format_time(acc.overdue_since or 0)}.\n"
            f"Your TR7 PAYG services stay on until {deadline}; unless the unpaid invoice is paid by then,\n"
            "they will be downgraded and stop.\n"
        )
    else:
        msg["Subject"] = f"TR7 services of {customer} ({provider}) downgraded"
        body = (
            f"Account {customer} at {provider} is downgraded since {format_time(act.at)}:\n"
            "its PAYG services are no longer entitled.\n"
            "Paying the unpaid invoice and the grace period's charges restores them.\n"
        )
    msg.set_content(body)
    return msg


def smtp_mailer(settings: SmtpSettings | None, timeout: float = 10.0) -> Mailer:
    """A Mailer that sends and reports the outcome; it never raises (the state change stands)."""

    def send(provider: str, customer: str, to: str | None, act: m.Action, acc: m.Account) -> str:
        if settings is None:
            return f"not sent: {ENV_HOST} is not set"
        if not to:
            return "not sent: no e-mail address on the account"
        try:
            # An address stored before addresses were checked may hold a CR/LF (a header
            # injection): refuse it here, and build the message before connecting, so that a
            # bad header costs no connection either.
            check_email(to)
            msg = message(settings.sender, to, provider, customer, act, acc)
        except InvalidEmail as exc:
            return f"not sent: invalid address on the account ({exc})"
        except ValueError as exc:  # another header refused by the email library (sender, subject)
            return f"not sent: {type(exc).__name__}: {exc}"
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=timeout) as smtp:
                if settings.starttls:
                    smtp.starttls()
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException, ValueError) as exc:  # ValueError: refused by send_message
            return f"not sent: {type(exc).__name__}: {exc}"
        return f"sent to {to}"

    return send
