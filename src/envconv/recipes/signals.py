"""SIGTERM and SIGHUP stop a run as Ctrl-C does: the same message, checkpoint, resume hint and exit code rule.

A batch scheduler or a closing terminal sends SIGTERM / SIGHUP, whose default action kills the
process at once: no message, and an atomic write in progress leaves its temporary file behind.
:func:`stop_on_signals` turns them into :class:`Terminated`, a ``KeyboardInterrupt``, so every
``finally`` runs (temporary files are removed, the last finished checkpoint is kept) and the
trainer's interrupt message names the checkpoint to resume from. The command line exits with
``128 + signal number``, as a shell reports a signal (Ctrl-C: 130, SIGTERM: 143, SIGHUP: 129).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "stop_on_signals", "SIGNALS"]

#: The signals handled like Ctrl-C (those the platform has).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """The process received ``signum`` (SIGTERM or SIGHUP) and stops as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated`; the old handlers come back after.

    Only the main thread can install signal handlers; elsewhere this does nothing.

    Example:
        >>> import os
        >>> try:
        ...     with stop_on_signals():
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ... except Terminated as stop:
        ...     print(stop, stop.exit_code)
        SIGTERM 143
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
