"""A wake-up for the service's main loop that signal handlers and threads may set without a lock."""

import contextlib
import select
import signal
import socket


class Wakeup:
    """A socket pair the main loop waits on.

    ``threading.Event`` will not do here: ``Event.set()`` takes the event's lock, and a signal
    handler runs in the main thread, which may hold that very lock inside ``Event.wait()``; the
    handler then waits for itself and the service hangs on SIGTERM (seen once in CI). A byte
    written to a non-blocking socket takes no lock.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._old_fd: int | None = None

    def set(self) -> None:
        # Full: a wake-up is pending anyway. Closed: the service is shutting down.
        with contextlib.suppress(OSError):
            self._write.send(b"\0")

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or sooner once woken; the wake-ups so far are used up."""
        select.select([self._read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):  # drained
            while self._read.recv(4096):
                pass

    def catch_signals(self) -> None:
        """Let the C-level signal handler wake the loop too, before the Python handler has run.

        Main thread only (a ValueError elsewhere, as for ``signal.signal``)."""
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)

    def close(self) -> None:
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._old_fd = None
        self._read.close()
        self._write.close()
