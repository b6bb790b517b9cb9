"""Progress of long work, in one style everywhere: "[dart] perplexity: step 3/40, 0:42 elapsed, ETA 8:38".

- `PlainTicker`: one line at most every `interval_s` seconds (the evaluation's batches through
  dart.lit.PlainProgress, the benches, the matched-compute pass) and a closing line;
- `progress(label, total)`: a transient bar on a terminal, else a PlainTicker (the benches);
- `phase(label, total, unit)`: a preparation phase that may take minutes on a big model (the vocabulary-projection
  priors, a calibration pass, the dense references, joining a model's parts). Nothing is printed while it stays
  short; past INTERVAL_S seconds it prints a line with its ETA every INTERVAL_S seconds and a closing line, so no
  phase is silent for longer than that. Lines go to stdout (flushed), as the evaluation's do.
"""
from __future__ import annotations

import contextlib
import sys
import time

INTERVAL_S = 10.0  # a preparation phase prints at most this long after its last line (tests set 0)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(label: str, done: int, total: int | None, elapsed: float, unit: str = "step") -> str:
    """"[dart] perplexity: step 3/40, 0:42 elapsed, ETA 8:38"; the ETA assumes the remaining steps take as long
    as the finished ones did on average."""
    if total:
        eta = duration(elapsed / done * (total - done)) if done else "?"
        return f"[dart] {label}: {unit} {done}/{total}, {duration(elapsed)} elapsed, ETA {eta}"
    return f"[dart] {label}: {unit} {done}, {duration(elapsed)} elapsed"


class PlainTicker:
    """Plain progress for output that is not a terminal: `step()` once per finished step prints one line at most
    every `interval_s` seconds (step i/n, elapsed, ETA; none for the last step), `finish()` one closing line
    (quiet=True: only when some line was printed or the work took `interval_s` or more). `clock` and `stream` are
    for tests."""

    def __init__(self, label: str, total: int | None, interval_s: float, clock=time.monotonic, stream=None,
                 unit: str = "step", quiet: bool = False):
        self.label, self.total, self.interval_s, self.clock, self.stream = label, total, float(interval_s), clock, stream
        self.unit, self.quiet = unit, quiet
        self.done = 0
        self.printed = False
        self.t0 = self.last = clock()

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
        self.printed = True

    def step(self, done: int | None = None) -> None:
        self.done = self.done + 1 if done is None else done
        now = self.clock()
        if now - self.last >= self.interval_s and (self.total is None or self.done < self.total):
            self.last = now
            self._print(progress_line(self.label, self.done, self.total, now - self.t0, self.unit))

    def finish(self) -> None:
        elapsed = self.clock() - self.t0
        if self.quiet and not self.printed and elapsed < self.interval_s:
            return
        self._print(f"[dart] {self.label}: {self.done} {self.unit}s done in {duration(elapsed)}")


@contextlib.contextmanager
def progress(label: str, total: int, every_s: float = 30.0):
    """A `step()` to call once per finished step: a transient bar on a terminal, else (nohup, SLURM, a pipe) a plain
    line every `every_s` seconds (PlainTicker)."""
    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda: bar.advance(task)
    else:
        yield PlainTicker(label, total, float(every_s)).step


@contextlib.contextmanager
def phase(label: str, total: int | None, unit: str = "step", clock=time.monotonic, stream=None):
    """A `step()` to call once per finished unit of a preparation phase: silent while the phase is short, then a
    line with its ETA every INTERVAL_S seconds and a closing line (PlainTicker, quiet). The same plain lines on a
    terminal: they stay in the scroll-back beside the evaluation's."""
    ticker = PlainTicker(label, total, INTERVAL_S, clock=clock, stream=stream, unit=unit, quiet=True)
    yield ticker.step
    ticker.finish()
