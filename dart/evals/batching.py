"""How a teacher-forced eval groups its samples into batches (`eval.batching`), one rule for eval=switch and
eval=fidelity.

- `consecutive` (default): the samples in list order, `eval.batch_size` at a time. The built-in lists interleave
  kinds and topics, so a batch mixes pair orders (news -> wiki beside wiki -> news) and may hold the document one
  row continues into as another row's prompt.
- `clean`: batches in which no row can be helped by another row's text through a mask shared by the batch
  (`strategy.batch_mask=shared`): every batch holds samples of one group only (a pair order such as news -> wiki,
  or a fidelity segment) and no document twice (no row's continuation is another row's prompt or continuation).
  First fit in list order inside each group; a group's last batch may be shorter.

With per-row masks (`strategy.batch_mask=per_row`) every row's numbers are those of batch 1 whatever the batching;
only the shared mask's price depends on it.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence

from dart.errors import check_integer, choice_error

MODES = ("consecutive", "clean")


def check(mode: str, batch_size) -> None:
    """One-line errors for a bad eval.batching or eval.batch_size, before any model loads."""
    if mode not in MODES:
        raise choice_error("eval.batching", mode, MODES)
    check_integer("eval.batch_size", batch_size, 1)


def make_batches(samples: Sequence, size: int, mode: str = "consecutive",
                 group: Callable[[object], Hashable] | None = None,
                 documents: Callable[[object], Iterable[Hashable]] | None = None) -> list[list]:
    """The samples in batches of at most `size` rows under `mode` (see the module docstring). `group(sample)` and
    `documents(sample)` say a sample's group and the documents it reads (prompt and continuation); `clean` needs
    both. Every sample lands in exactly one batch."""
    check(mode, size)
    if mode == "consecutive":
        return [list(samples[i : i + size]) for i in range(0, len(samples), size)]
    if group is None or documents is None:
        raise ValueError("batching 'clean' needs group() and documents()")
    batches: list[tuple[Hashable, list, set]] = []  # (group, rows, documents read), in order of creation
    open_by_group: dict[Hashable, list[int]] = {}
    for s in samples:
        g, docs = group(s), set(documents(s))
        for b in open_by_group.setdefault(g, []):
            _, rows, seen = batches[b]
            if len(rows) < size and not (docs & seen):
                rows.append(s)
                seen |= docs
                break
        else:
            open_by_group[g].append(len(batches))
            batches.append((g, [s], set(docs)))
    order = {g: i for i, g in enumerate(open_by_group)}  # groups in order of first appearance
    return [rows for _, rows, _ in sorted(batches, key=lambda b: order[b[0]])]
