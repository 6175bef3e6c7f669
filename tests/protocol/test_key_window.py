"""A key's validity window [enrolled_at, revoked_at] (heartbeat-v1.md §4: rejected "before the key's
enrolment or after its revocation")."""

import pytest

from protocol.errors import ProtocolError
from protocol.heartbeat import check_key_window, parse_unverified, sign_heartbeat
from protocol.timefmt import parse_time

T = parse_time("2026-11-01T00:00:00Z")


def test_window_holds_both_its_instants(agent_key, make_payload):
    hb = parse_unverified(sign_heartbeat(agent_key, make_payload(agent_key, time="2026-11-01T00:00:00Z")))
    check_key_window(hb, enrolled_at=T, revoked_at=None)
    check_key_window(hb, enrolled_at=T - 1, revoked_at=T + 1)
    check_key_window(hb, enrolled_at=T - 100, revoked_at=T)  # at the revocation: not after it
    for enrolled, revoked in [(T + 1, None), (T - 100, T - 1)]:
        with pytest.raises(ProtocolError) as info:
            check_key_window(hb, enrolled_at=enrolled, revoked_at=revoked)
        assert info.value.rule == "key.window"
