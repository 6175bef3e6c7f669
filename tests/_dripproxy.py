"""A proxy that drips a server's answers a byte at a time, or holds one: the adapters' deadline tests."""

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class DripProxy:
    """In front of a server (``connect`` opens a connection to it), listening on ``listener``.

    Answers are sent a byte every ``pause`` seconds: a server (or a path to it) answering slowly
    but steadily, each read within any socket timeout. Without ``trigger`` every answer drips;
    with it, those of a connection once a request naming ``trigger`` went through on it. With
    ``hold`` (an Event), such an answer is held back until the event is set, then sent whole.
    Once ``calm`` is set, answers go whole again, the rest of one being dripped included."""

    def __init__(self, connect: Callable[[], socket.socket], listener: socket.socket, pause: float = 0.05,
                 trigger: bytes | None = None, hold: threading.Event | None = None) -> None:
        self.connect, self.listener, self.pause = connect, listener, pause
        self.trigger, self.hold = trigger, hold
        self.calm = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def tcp(cls, upstream_url: str, **kw: object) -> "DripProxy":
        """Before ``upstream_url``'s host and port; ``proxy.url`` is that URL through the proxy."""
        parts = urlsplit(upstream_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        proxy = cls(lambda: socket.create_connection((host, port)), socket.create_server(("127.0.0.1", 0)),
                    **kw)  # type: ignore[arg-type]
        proxy.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.listener.getsockname()[1]}"))
        return proxy

    @classmethod
    def unix(cls, upstream: Path, path: Path, **kw: object) -> "DripProxy":
        """Before the unix socket ``upstream``, listening on ``path``."""
        def connect() -> socket.socket:
            up = socket.socket(socket.AF_UNIX)
            up.connect(str(upstream))
            return up

        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen(16)
        proxy = cls(connect, listener, **kw)  # type: ignore[arg-type]
        proxy.path = path
        return proxy

    url: str
    path: Path

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = self.connect()
            dripping = {"on": self.trigger is None}
            threading.Thread(target=self._pump, args=(client, up, dripping, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, dripping, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, dripping: dict[str, bool],
              requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self.trigger is not None and self.trigger in data and not self.calm.is_set():
                    dripping["on"] = True
                if requests or not dripping["on"] or self.calm.is_set():
                    dst.sendall(data)
                elif self.hold is not None:
                    self.hold.wait(120)
                    dripping["on"] = False
                    dst.sendall(data)
                else:
                    for i in range(len(data)):
                        if self.calm.is_set():
                            dst.sendall(data[i:])
                            break
                        dst.sendall(data[i:i + 1])
                        time.sleep(self.pause)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
