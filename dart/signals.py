"""SIGTERM / SIGUSR1 end a run at the next model forward, recorded as `status: failed` with "terminated by SIGTERM".

A cluster sends SIGTERM (SLURM: SIGTERM, or SIGUSR1 with `--signal`) some time before it kills a job. The handler
only sets a flag (raising from a signal handler could interrupt a results.json write); a forward pre-hook on the
model's input embeddings (every forward of every decode loop passes through them) raises `Terminated` at the next
forward, and the pipeline also checks the flag between jobs and evaluation steps. `Terminated` is a BaseException,
like KeyboardInterrupt, so that no evaluator's or library's `except Exception` swallows it. SIGINT (Ctrl-C) is left
to Python's own KeyboardInterrupt.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: int | None = None


class Terminated(BaseException):
    """The run was asked to stop by a signal; the exit code is 128 + the signal number (143 for SIGTERM)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"terminated by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame) -> None:
    global _received
    if _received is None:
        _received = int(signum)


def install() -> None:
    """Set the flag-only handlers (main thread only; elsewhere Python does not allow signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def received() -> int | None:
    return _received


def check() -> None:
    """Raise Terminated if a stop signal has arrived."""
    if _received is not None:
        raise Terminated(_received)


def reset() -> None:  # tests
    global _received
    _received = None


def hook(model):
    """A forward pre-hook that raises Terminated at the next forward after a stop signal; returns the handle."""
    target = model
    try:
        emb = model.get_input_embeddings()
        if emb is not None:
            target = emb
    except (AttributeError, NotImplementedError):
        pass
    return target.register_forward_pre_hook(lambda module, args: check())
