"""The billing e-mail of an account: one plain addr-spec, checked before it is stored or mailed.

The address goes into a To header. A CR or LF in it would inject headers (a Bcc to anyone), and
the email library refuses such a header with a ValueError, so an unchecked address broke every
mail to the account (and, before each account ticked alone, the tick of every provider).
"""

from email.headerregistry import Address
from email.utils import parseaddr

MAX_LENGTH = 254  # RFC 5321's limit on a forward path, less the angle brackets
FIELD = "email"


class InvalidEmail(ValueError):
    """An address refused; the message starts with the field's name, for forms and the CLI."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{FIELD}: {reason}")


def check_email(value: str) -> str:
    """``value`` itself when it is one addr-spec such as ``ap@customer.example``, else InvalidEmail.

    Only printable ASCII without spaces: that excludes CR, LF and every other control, format
    or line-separator character, and the SMTP server needs no SMTPUTF8 (an international domain
    is written in its xn-- form). Display names, comments and lists are refused, not tidied up,
    so what is stored is exactly what mail is sent to.
    """
    if not isinstance(value, str) or not value:
        raise InvalidEmail("an address is required")
    if len(value) > MAX_LENGTH:
        raise InvalidEmail(f"at most {MAX_LENGTH} characters, got {len(value)}")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise InvalidEmail("printable ASCII only: no spaces, line breaks or control characters")
    try:
        parsed = Address(addr_spec=value)
    except Exception as exc:  # the parser raises ValueError, IndexError or header defects
        raise InvalidEmail(f"not an address of the form name@domain ({type(exc).__name__})") from exc
    if not parsed.username or not parsed.domain or parsed.addr_spec != value:
        raise InvalidEmail("exactly one address of the form name@domain, without a name or comment")
    if parseaddr(value) != ("", value):  # a second, independent parser must read the same address
        raise InvalidEmail("exactly one address of the form name@domain, without a name or comment")
    return value


def optional_email(value: str | None) -> str | None:
    """None or "" (keep the account's address) as None; anything else must pass check_email."""
    return None if value is None or value == "" else check_email(value)
