"""Stopping a checkpointed fit cleanly: SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM
(``timeout``, a batch scheduler, a lent machine's time limit) wait for the end of the epoch
under way, the checkpoint is written there, and :class:`TrainingInterrupted` is raised; a resume
then continues from that epoch exactly as the uninterrupted run would have.

A second signal acts at once (the handlers in place before are restored by the first one), so
an epoch that does not end can still be stopped.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import AbstractContextManager
from types import FrameType, TracebackType
from typing import Any

__all__ = ["DeferredSignals", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """A fit stopped by a signal after a whole epoch, its checkpoint written.

    A :class:`KeyboardInterrupt`, so code that stops on Ctrl-C stops on it too.

    Attributes:
        signum: The signal that asked for the stop.
        epoch: Epochs done (the checkpoint's epoch).
        epochs: Epochs the interrupted call was to reach.
        path: The checkpoint written.
    """

    def __init__(
        self, signum: signal.Signals, epoch: int, epochs: int, path: str | os.PathLike
    ) -> None:
        self.signum, self.epoch, self.epochs, self.path = signum, epoch, epochs, path
        super().__init__(
            f"{signum.name}: training stopped after epoch {epoch} of {epochs}, the checkpoint "
            f"{path} written there"
        )

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by this signal (128 + its number)."""
        return 128 + int(self.signum)


class DeferredSignals(AbstractContextManager["DeferredSignals"]):
    """While active, SIGINT and SIGTERM are recorded in :attr:`received` instead of acting.

    The first one restores the handlers that were in place, so a second acts as it would have.
    Outside the main thread (where Python cannot set handlers) it records nothing and changes
    nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> DeferredSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                previous = signal.signal(s, self._record)
                # None: a handler not set from Python; the default is the closest to it
                self._previous[s] = signal.SIG_DFL if previous is None else previous
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()
