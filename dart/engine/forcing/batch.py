"""The model side of one chunked teacher-forcing call: every row's prompt and forced tokens, how far each row is, the
KV cache and attention mask, and the logits handed to the caller. It knows nothing of the schedule: the driver
(dart.engine.forcing.rounds) says which rows run how many tokens under which Plan."""
from __future__ import annotations

import torch

from dart.engine.forcing import Take, device_of, has_sliding_window
from dart.engine.plan import Plan


class Batch:
    def __init__(self, model, c, prefixes, forced, group, names, take: Take, prefix_logits: bool, pad_id: int):
        """c: the engine controller (None: no engine). names[b]: the caller's index of row b."""
        self.model, self.c, self.take = model, c, take
        self.prefixes, self.forced, self.group = [list(p) for p in prefixes], [list(f) for f in forced], list(group)
        self.names, self.prefix_logits, self.pad = names, prefix_logits, int(pad_id)
        self.dev = device_of(model)
        self.B = len(forced)
        self.N = [len(f) for f in self.forced]  # forced tokens per row
        self.P = [len(self.prefixes[g]) for g in self.group]
        self.at = [0] * self.B  # each row's next forced index: its next forward is k = at + 1
        self.holes = not has_sliding_window(getattr(model, "config", None))  # may the cache hide columns of a row
        self.cache = self.amask = None

    # ------------------------------------------------------------------ progress
    def left(self, b: int) -> int:
        """Forced tokens row b has not run yet."""
        return self.N[b] - self.at[b]

    def advance(self, b: int, k: int) -> None:
        self.at[b] = min(self.at[b] + k, self.N[b])

    # ------------------------------------------------------------------ forwards
    def start(self, rows: int) -> None:
        """An empty KV cache and attention mask for `rows` rows (the prompts' first forward comes next)."""
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.amask = torch.zeros((rows, 0), dtype=torch.long, device=self.dev)

    def forward(self, ids, new_valid, positions, plan: Plan | None, logits_to_keep=0):
        """One forward of the cohort's new tokens (n, T) after the cached columns (under `plan` when the engine is
        attached); returns the logits."""
        self.amask = torch.cat([self.amask, new_valid.long()], dim=1)
        kwargs = dict(input_ids=ids, attention_mask=self.amask, position_ids=positions, past_key_values=self.cache,
                      use_cache=True, logits_to_keep=logits_to_keep)
        if self.c is None or plan is None:
            return self.model(**kwargs).logits
        with self.c.forced(plan):
            return self.model(**kwargs).logits

    def emit(self, rows: list[int], j0: list[int], logits: torch.Tensor) -> None:
        """take() per set of rows that start at the same forced index."""
        by_start: dict[int, list[int]] = {}
        for i, j in enumerate(j0):
            by_start.setdefault(j, []).append(i)
        for j, idx in by_start.items():
            sel = logits if len(idx) == len(rows) else logits[torch.tensor(idx, device=logits.device)]
            self.take([self.names[rows[i]] for i in idx], j, sel)

    def chunk(self, rows: list[int], T: int):
        """Tokens (n, T), valid (n, T) bool and positions (n, T) of the next T forced tokens of each row."""
        n = len(rows)
        ids = torch.full((n, T), self.pad, dtype=torch.long)
        valid = torch.zeros((n, T), dtype=torch.bool)
        pos = torch.zeros((n, T), dtype=torch.long)
        for i, b in enumerate(rows):
            j = self.at[b]
            toks = self.forced[b][j : j + T]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            valid[i, : len(toks)] = True
            pos[i] = self.P[b] + j + torch.arange(T)
        return ids.to(self.dev), valid.to(self.dev), pos.to(self.dev)

    def forward_index(self, rows: list[int], T: int) -> torch.Tensor:
        """Forward index k = j + 1 of each position of the next chunk (n, T), on the host."""
        return torch.tensor([self.at[b] for b in rows])[:, None] + 1 + torch.arange(T)[None, :]

    def select(self, index: torch.Tensor) -> None:
        """Keep (and repeat) rows `index` of the cache, the attention mask and the engine's per-row state."""
        self.cache.batch_select_indices(index)
        self.amask = self.amask.index_select(0, index)
        if self.c is not None:
            self.c.select_rows(index)

    # ------------------------------------------------------------------ the cache of parked rows
    def keep(self, i: int, drop: int) -> dict:
        """Row i's cache and attention mask without their last `drop` columns (a row parked at its trigger)."""
        cols = self.amask.shape[1] - drop
        return {"kv": [(layer.keys[i : i + 1, :, :cols], layer.values[i : i + 1, :, :cols]) for layer in self.cache.layers],
                "amask": self.amask[i : i + 1, :cols]}

    def restore(self, kept: list[dict]) -> None:
        """The cache and attention mask of parked rows, in order (shorter ones padded with hidden columns)."""
        from transformers import DynamicCache

        width = max(p["amask"].shape[1] for p in kept)

        def pad(x, dim):
            extra = width - x.shape[dim]
            if not extra:
                return x
            shape = list(x.shape)
            shape[dim] = extra
            return torch.cat([x, x.new_zeros(shape)], dim=dim)

        layers = len(kept[0]["kv"])
        self.cache = DynamicCache([(torch.cat([pad(p["kv"][l][0], 2) for p in kept]),
                                    torch.cat([pad(p["kv"][l][1], 2) for p in kept])) for l in range(layers)])
        self.amask = torch.cat([pad(p["amask"], 1) for p in kept])
