"""Text an adapter returns that is not valid Unicode fails that adapter alone; the agent signs on.

Found by an adversarial review: a lone UTF-16 surrogate (user-editable VM notes or tags through a
JSON API's "\\ud800", an undecodable byte in an SDK's error, half of a PowerShell `_xD83D_` pair)
passed the poller's checks and failed signing, which stopped the agent at every poll.
"""

import fake_adapter
import pytest

from adapters.base import AdapterConfig, AdapterError, Observation, PollResult
from adapters.hyperv_ps import decode_clixml
from agent.poller import Poller, _checked
from protocol.heartbeat import parse_unverified, sign_heartbeat
from protocol.keys import AgentKey


def test_an_observation_with_a_lone_surrogate_fails_its_adapter() -> None:
    cfg = AdapterConfig(name="kvm-local", platform="kvm")
    obs, error = _checked(cfg, PollResult([Observation("TR7-0001", "vm-1", "host\ud800", "running")]))
    assert obs == [] and error is not None and "lone surrogate" in error


def test_an_error_with_a_lone_surrogate_is_signed_with_it_replaced(fake_registry: None, monkeypatch) -> None:
    def poll(self) -> PollResult:
        raise AdapterError("VM db\udcff not found", "diagnostic")

    monkeypatch.setattr(fake_adapter.FakeAdapter, "poll", poll)
    poller = Poller([fake_adapter.FakeConfig(name="l", platform="kvm")])
    try:
        outcome = poller.poll_all()
    finally:
        poller.close()
    assert outcome.polls[0]["ok"] is False and outcome.polls[0]["error"] == "VM db? not found"
    key = AgentKey.generate()
    sign_heartbeat(key, {"v": 1, "agent": key.kid, "seq": 1, "prev": "0" * 64, "time": "2026-12-06T00:00:00Z",
                         "interval": 60, "polls": outcome.polls, "observations": []})


def test_powershell_escapes_of_a_character_beyond_the_bmp_are_joined() -> None:
    err = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
           b'<S S="Error">VM db_xD83D__xDE00_ not found_x000D__x000A_</S>'
           b'<S S="Error">half _xD83D_ only</S></Objs>')
    assert decode_clixml(err) == "VM db\U0001f600 not found\r\nhalf \ufffd only"


def test_a_payload_signing_refuses_is_signed_with_every_adapter_failed(
    in_process, fake_registry: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever slips past the poller's checks costs the slot's observations, not the agent."""
    service, _cfg = in_process()
    real = service.poller.poll_all

    def poisoned():
        out = real()
        out.adapters[0].observations = [{**out.adapters[0].observations[0], "host": "h\ud800"}]
        return out

    monkeypatch.setattr(service.poller, "poll_all", poisoned)
    service.poll_job()
    assert service.fatal is None
    [token] = service.spool.unshipped()
    hb = parse_unverified(token)
    assert hb.observations == [] and [p["ok"] for p in hb.polls] == [False]
    assert "refused at signing" in hb.polls[0]["error"]

