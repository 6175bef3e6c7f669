"""Protocol errors: each names the rule of heartbeat-v1.md it enforces."""


class ProtocolError(ValueError):
    """A heartbeat, key or note that breaks the wire contract.

    ``rule`` is a short stable code (e.g. ``header``, ``payload.seq``, ``signature``) that
    verifiers print and tests match; the message is the human diagnostic.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.detail = message
