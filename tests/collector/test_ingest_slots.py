"""A worker process ingests at most INGEST_SLOTS batches at once: later requests wait their turn
(answered in full, never refused); a slot is given back when its batch ends, whether it failed or
its request was cancelled meanwhile; the same app may be served by one event loop after another."""

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from collector import ingestslots, server
from tests._seed import opened


class SlowIngest:
    """ingest_lines standing in: each batch takes 0.2 s; counts the batches running at once."""

    def __init__(self) -> None:
        self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, engine, lines, now):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)  # long enough for every request to have arrived meanwhile
        with self.lock:
            self.running -= 1
        if lines[0] == "fail":
            raise RuntimeError("the database went away")
        return [{"seq": 1, "status": "accepted"} for _ in lines]


@pytest.fixture
def slow(monkeypatch) -> SlowIngest:
    fake = SlowIngest()
    monkeypatch.setattr(ingestslots, "ingest_lines", fake)
    return fake


def _client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://collector")


def _post(http: httpx.AsyncClient, body: str):
    return http.post("/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"})


def _post_all(app, bodies: list[str]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with _client(app) as http:
            return list(await asyncio.gather(*(_post(http, b) for b in bodies)))

    return asyncio.run(go())


def test_batches_beyond_the_slots_wait_and_are_all_answered(tmp_path: Path, slow) -> None:
    with opened(tmp_path) as st:
        answers = _post_all(server.create_app(st), ["fail", "fail", *(f"line-{i}" for i in range(5))])
    assert slow.most == ingestslots.INGEST_SLOTS == 2
    assert [a.status_code for a in answers] == [500, 500] + [200] * 5
    assert all(a.json() == {"results": [{"seq": 1, "status": "accepted"}]} for a in answers[2:])


def test_a_cancelled_request_keeps_its_slot_until_its_batch_ends(tmp_path: Path, slow) -> None:
    """Requests cancelled while their batch runs (a server that cancels on disconnect, a shutdown
    timeout) and while they wait: the batches still running keep their slots, no third starts
    beside them, and later requests are served."""
    with opened(tmp_path) as st:
        app = server.create_app(st)

        async def go() -> list[int]:
            async with _client(app) as http:
                tasks = [asyncio.create_task(_post(http, f"x{i}")) for i in range(8)]
                await asyncio.sleep(0.05)  # 2 running, 6 waiting
                for t in tasks[:5]:  # both running ones and 3 waiting ones
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                later = await asyncio.wait_for(asyncio.gather(*(_post(http, f"y{i}") for i in range(4))), 10)
                return [r.status_code for r in later]

        assert asyncio.run(go()) == [200] * 4
    assert slow.most == 2


def test_the_same_app_served_by_a_second_event_loop(tmp_path: Path, slow) -> None:
    with opened(tmp_path) as st:
        app = server.create_app(st)
        first = _post_all(app, ["a"] * 4)
        second = _post_all(app, ["b"] * 4)
    assert [r.status_code for r in first + second] == [200] * 8
