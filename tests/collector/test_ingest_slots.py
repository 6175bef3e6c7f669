"""A worker process ingests at most INGEST_SLOTS batches at once: later requests wait their turn
(answered in full, never refused), and the slots are given back when a batch fails."""

import asyncio
import threading
import time
from pathlib import Path

import httpx

from collector import server
from tests._seed import opened


def _post_all(app, bodies: list[str]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as http:
            return list(await asyncio.gather(*(
                http.post("/v1/heartbeats", content=b, headers={"Content-Type": "text/plain"}) for b in bodies
            )))

    return asyncio.run(go())


def test_batches_beyond_the_slots_wait_and_are_all_answered(tmp_path: Path, monkeypatch) -> None:
    running, most, lock = 0, 0, threading.Lock()

    def slow_ingest(engine, lines, now):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)  # long enough for every request to have arrived meanwhile
        with lock:
            running -= 1
        if lines[0] == "fail":
            raise RuntimeError("the database went away")
        return [{"seq": 1, "status": "accepted"} for _ in lines]

    monkeypatch.setattr(server, "ingest_lines", slow_ingest)
    with opened(tmp_path) as st:
        app = server.create_app(st)
        bodies = ["fail", "fail", *(f"line-{i}" for i in range(5))]
        answers = _post_all(app, bodies)
    assert most == server.INGEST_SLOTS == 2
    assert [a.status_code for a in answers] == [500, 500] + [200] * 5
    assert all(a.json() == {"results": [{"seq": 1, "status": "accepted"}]} for a in answers[2:])
