"""The drift benchmark at scale (`eval=switch`, docs/method.md section 9): does a pruned model stay close to the dense
one when the topic changes under it?

Each sample is `prefix` tokens of text A (the prompt) followed by `length` tokens of text B, teacher-forced. The
built-in pairs come from the offline real text (dart.data.texts), deterministically (`seed`):
- switch pairs, half news -> wiki (A: the start of an ABC news article, B: the start of a Wikipedia article),
  half wiki -> news;
- same-topic controls: A and B from the same document, B the next `length` tokens after A (half news, half wiki
  where enough news articles are long enough).
Your own pairs: `eval.pairs=path.jsonl`, one {"a": "...", "b": "..."} per line (optional "kind", default
"user"); A is the first `prefix` tokens of a, B the first `length` tokens of b.

Per sample, on the B segment, as dart.evals.fidelity does: KL(dense || pruned) per token (mean), top-1 agreement
with dense, the perplexity of the pruned and of the dense model, and the re-traces the drift detector fired
during the sample (`strategy.drift_log()`). The dense reference is the same model with the strategy paused.
Metrics per pair kind and over all pairs, each with a percentile-bootstrap 95% interval over samples
(dart.stats, fixed seed) and n; one row per sample in `switch_samples.jsonl` in the run folder.

`eval.matched=<strategy>` or a list of them (the main job, eval=overview: static_prompt and teal) scores other
strategies on the same samples after the run, at the effective sparsity the run measured (matched compute), against
the same dense reference (kept in memory, or dense_cache's), each kind's samples at the run's effective sparsity on
that kind (`matched_sparsities`, `score_kind`): `matched_row` gives one's metrics and the paired difference run -
matched per subset.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from dart.errors import ConfigError, check_integer, choice_error
from dart.evals.base import Evaluator

SAMPLES_FILE = "switch_samples.jsonl"
METRICS = ("kl", "top1", "ppl", "ppl_dense", "retraces")
PAIRS_EXPECTED = 'expected a JSONL file with one {"a": "<text A>", "b": "<text B>"} object per line'


# ----------------------------------------------------------------------------- pairs
def read_pairs_file(pairs_file) -> list[dict]:
    """The pairs of a user JSONL file: [{"a", "b", "kind", "line"}]. A missing or empty file, a line that is not a
    JSON object with non-empty strings "a" and "b", is one ConfigError naming the file (and the line)."""
    path = Path(str(pairs_file)).expanduser()
    shown = f"eval.pairs={str(pairs_file)!r}"
    if not path.is_file():
        raise ConfigError(f"{shown} {'is a folder' if path.is_dir() else 'does not exist'}; {PAIRS_EXPECTED}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown} cannot be read ({type(e).__name__}); {PAIRS_EXPECTED}") from None
    pairs = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{shown}: line {no} is not valid JSON ({e.msg} at column {e.colno}); "
                              f"{PAIRS_EXPECTED}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{shown}: line {no} is a JSON {type(obj).__name__}, not an object; {PAIRS_EXPECTED}")
        for key in ("a", "b"):
            if key not in obj:
                raise ConfigError(f"{shown}: line {no} has no {key!r}; {PAIRS_EXPECTED}")
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise ConfigError(f"{shown}: line {no}: {key!r} must be a non-empty text, not {obj[key]!r:.40}; "
                                  f"{PAIRS_EXPECTED}")
        kind = obj.get("kind", "user")
        if not isinstance(kind, str) or not kind.strip() or "/" in kind:
            raise ConfigError(f"{shown}: line {no}: 'kind' must be a short label without '/' (e.g. switch, control), "
                              f"not {kind!r:.40}")
        pairs.append({"a": obj["a"], "b": obj["b"], "kind": kind.strip(), "line": no})
    if not pairs:
        raise ConfigError(f"{shown} is empty; {PAIRS_EXPECTED}")
    return pairs


def interleave(groups: list[list]) -> list:
    """The items of all groups in one list, each group spread evenly (so any prefix of the list, eval.limit, holds
    every group in proportion); ties keep the groups' order."""
    keyed = [((i + 0.5) / len(g), gi, i, x) for gi, g in enumerate(groups) for i, x in enumerate(g)]
    return [x for *_, x in sorted(keyed, key=lambda k: k[:3])]


def builtin_pairs(news: list[list[int]], wiki: list[list[int]], prefix: int, length: int, n_switch: int,
                  n_control: int, seed: int = 0) -> list[dict]:
    """Samples from tokenized news and wiki documents (file order): n_switch two-topic pairs (half news -> wiki,
    half wiki -> news) and n_control same-document controls (half news, half wiki; wiki fills in when too few news
    articles are long enough), interleaved. Each: {"kind", "order", "a": (source, doc), "b": (source, doc),
    "tokens"}. Documents are drawn without repetition inside each order (cycling only when a source runs out)
    from a fixed permutation (random.Random(seed))."""
    rng = random.Random(seed)
    src = {"news": news, "wiki": wiki}

    def eligible(name: str, need: int) -> list[int]:
        idx = [i for i, d in enumerate(src[name]) if len(d) >= need]
        rng.shuffle(idx)
        return idx

    def short(name, need, what):
        return ConfigError(f"eval.{what}={need} is too long for the built-in {name} documents (none has {need} "
                           "tokens); use shorter segments")

    groups = []
    for a_src, b_src in (("news", "wiki"), ("wiki", "news")):
        n = n_switch // 2 + (n_switch % 2 if a_src == "news" else 0)
        if n <= 0:
            continue
        a_idx, b_idx = eligible(a_src, prefix), eligible(b_src, length)
        if not a_idx:
            raise short(a_src, prefix, "prefix")
        if not b_idx:
            raise short(b_src, length, "length")
        group = []
        for k in range(n):
            a, b = a_idx[k % len(a_idx)], b_idx[k % len(b_idx)]
            group.append({"kind": "switch", "order": f"{a_src}->{b_src}", "a": (a_src, a), "b": (b_src, b),
                          "tokens": src[a_src][a][:prefix] + src[b_src][b][:length]})
        groups.append(group)
    if n_control > 0:
        need = prefix + length
        news_idx, wiki_idx = eligible("news", need), eligible("wiki", need)
        if not news_idx and not wiki_idx:
            raise ConfigError(f"eval.prefix + eval.length = {need} tokens is too long for a same-document control "
                              "(no built-in document is that long); use shorter segments or eval.controls=0")
        n_news = min(n_control // 2, len(news_idx)) if wiki_idx else n_control
        chosen = interleave([[("news", news_idx[k % len(news_idx)]) for k in range(n_news)],
                             [("wiki", wiki_idx[k % len(wiki_idx)]) for k in range(n_control - n_news)]])
        groups.append([{"kind": "control", "order": f"{s}->{s}", "a": (s, i), "b": (s, i), "tokens": src[s][i][:need]}
                       for s, i in chosen])
    return interleave(groups)


def row_of(entry: dict, request0: int, lockstep: bool) -> int:
    """The batch row a drift-log entry belongs to: a lockstep batch (batch_mask=shared) is one request with rows
    0..B-1; the chunked and reference drivers run each row as its own request (numbered after request0, row 0)."""
    return int(entry["row"]) if lockstep else int(entry["request"]) - request0 - 1


def compact(outputs: list[dict]) -> list[dict]:
    """Per-sample figures small enough for results.json, for paired comparisons between runs (dart.tables.controls);
    `effective`: the sample's batch's effective sparsity (the sample's own at batch size 1)."""
    return [{"index": o["index"], "kind": o["kind"], "kl": round(o["kl"], 6), "top1": round(o["top1"], 6),
             "retraces": o["retraces"], "effective": round(o["skipped"] / o["tokens"], 6) if o["tokens"] else None}
            for o in outputs]


def effective_by_kind(subsets: list[tuple[str, list[dict]]]) -> dict[str, float | None]:
    """Effective sparsity per subset (kind, and "all"): the decoded tokens' skipped fractions summed over its
    samples over their tokens. None for a subset none of whose samples skipped anything was counted for, and for a
    kind some of whose samples shared a batch with another kind's (the batch's figure is not theirs alone)."""
    out: dict[str, float | None] = {}
    for kind, rows in subsets:
        tokens = sum(o["tokens"] for o in rows)
        mixed = kind != "all" and any(len(o["batch_kinds"]) > 1 for o in rows)
        out[kind] = sum(o["skipped"] for o in rows) / tokens if tokens and not mixed else None
    return out


def check_matched(names) -> tuple[str, ...]:
    """eval.matched: null, a strategy of conf/strategy/ other than dense (dense is in every comparison already), or
    a list of them (each scored in turn)."""
    if names is None:
        return ()
    from dart.compose import options

    from collections.abc import Sequence

    allowed = [o for o in options("strategy") if o != "dense"]
    if not isinstance(names, (str, Sequence)):
        raise choice_error("eval.matched", names, [*allowed, "null", "a list of them"])
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in allowed:
            raise choice_error("eval.matched", name, [*allowed, "null", "a list of them"])
    if len(set(names)) < len(names):
        raise ConfigError(f"eval.matched={names} names a strategy twice; allowed: each at most once")
    return tuple(names)


# ----------------------------------------------------------------------------- the evaluator
class Switch(Evaluator):
    name = "switch"

    def __init__(self, prefix=200, length=200, pairs=None, switch_pairs=120, controls=40, limit=None, seed=0,
                 resamples=2000, forcing="chunked", batch_size=1, batching="consecutive", matched=None, name=None,
                 **kwargs):
        super().__init__(name=name, limit=limit)
        from dart.engine.forcing import MODES as FORCING
        from dart.evals import batching as batching_rule

        if forcing not in FORCING:
            raise choice_error("eval.forcing", forcing, FORCING)
        batching_rule.check(batching, batch_size)
        for key, v, low in (("prefix", prefix, 1), ("length", length, 2), ("switch_pairs", switch_pairs, 0),
                            ("controls", controls, 0), ("resamples", resamples, 1)):
            check_integer(f"eval.{key}", v, low)
        if pairs is None and switch_pairs + controls == 0:
            raise ConfigError("eval.switch_pairs=0 and eval.controls=0: no pairs to evaluate")
        self.prefix, self.length, self.forcing, self.batch_size = prefix, length, forcing, batch_size
        self.batching = batching
        self.n_switch, self.n_control, self.seed, self.resamples = switch_pairs, controls, int(seed), resamples
        self.pairs_file = pairs
        self.user_pairs = read_pairs_file(pairs) if pairs is not None else None  # fails before any model loads
        self.matched = check_matched(matched)
        self._outputs: list[dict] = []

    def setup(self, ctx) -> None:
        super().setup(ctx)
        tok = ctx.tokenizer
        encode = lambda text: tok(text, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
        if self.user_pairs is not None:
            samples = []
            for p in self.user_pairs:
                a, b = encode(p["a"]), encode(p["b"])
                for key, ids, need, what in (("a", a, self.prefix, "eval.prefix"), ("b", b, self.length, "eval.length")):
                    if len(ids) < need:
                        raise ConfigError(f"eval.pairs={str(self.pairs_file)!r}: line {p['line']}: text {key!r} has "
                                          f"{len(ids)} tokens, needs at least {what}={need}")
                samples.append({"kind": p["kind"], "order": "user", "a": ("line", p["line"]), "b": ("line", p["line"]),
                                "tokens": a[: self.prefix] + b[: self.length]})
        else:
            from dart.data.texts import news_articles, wiki_documents

            news = [encode(d) for d in news_articles()]
            wiki = [encode(d) for d in wiki_documents()]
            samples = builtin_pairs(news, wiki, self.prefix, self.length, self.n_switch, self.n_control, self.seed)
        n = min(int(self.limit or len(samples)), len(samples))
        self._samples = [dict(s, index=i) for i, s in enumerate(samples[:n])]
        counts: dict[str, int] = {}
        for s in self._samples:
            key = s["kind"] if s["order"] == "user" else s["order"]
            counts[key] = counts.get(key, 0) + 1
        self.extra["pairs"] = {"source": "builtin" if self.user_pairs is None else str(self.pairs_file),
                               "prefix": self.prefix, "length": self.length, "seed": self.seed, "counts": counts,
                               "batching": self.batching, "batch_sizes": [len(b) for b in self.batches()]}
        if ctx.dense_cache is not None:
            ctx.dense_cache.warm(ctx.model, [self.batch_ids(b) for b in self.batches()], self.prefix)
        elif self.matched and ctx.strategy.name != "dense":  # the matched pass reads the run's dense reference back
            from dart.evals.dense_cache import MemoryCache

            ctx.dense_cache = MemoryCache()

    def batch_ids(self, batch) -> torch.Tensor:
        return torch.tensor([s["tokens"] for s in batch], device=self.ctx.device)

    def batches(self):
        """Samples in batches of eval.batch_size rows by eval.batching (dart.evals.batching): consecutive samples
        (interleaved kinds and topics), or clean batches of one pair order without a document read twice."""
        from dart.evals.batching import make_batches

        return make_batches(self._samples, self.batch_size, self.batching,
                            group=lambda s: s["kind"] if s["order"] == "user" else s["order"],
                            documents=lambda s: {tuple(s["a"]), tuple(s["b"])})

    def step(self, batch):
        return self._score(batch, self.ctx.strategy)

    @torch.no_grad()
    def _score(self, batch, strategy):
        from dart.evals.decoding import compare_with_dense

        ids = self.batch_ids(batch)
        checks0, triggers0 = (len(x) for x in strategy.drift_log())  # the dense pass (strategy paused) logs nothing
        request0 = strategy.requests_started()
        lockstep = strategy.lockstep(len(batch))
        skipped0, tokens0 = strategy.decode_counts()
        c = compare_with_dense(self.ctx.model, strategy, ids, self.prefix, self.forcing, self.ctx.dense_cache)
        skipped1, tokens1 = strategy.decode_counts()
        # the batch's effective sparsity, shared by its rows (a row's own where a batch is one row)
        skipped, tokens = (skipped1 - skipped0) / len(batch), (tokens1 - tokens0) / len(batch)
        checks, triggers = (list(x[k:]) for x, k in zip(strategy.drift_log(), (checks0, triggers0)))
        stats = torch.stack([c.kl.mean(1), c.top1.mean(1), c.nll.mean(1), c.nll_dense.mean(1)], 1).tolist()
        out = []
        for i, sample in enumerate(batch):  # a batch's triggers and checks by row (one request per row when chunked)
            mine = [t for t in triggers if row_of(t, request0, lockstep) == i]
            out.append({"index": sample["index"], "kind": sample["kind"], "order": sample["order"],
                        "a": list(sample["a"]), "b": list(sample["b"]), "tokens_scored": c.kl.shape[1],
                        "kl": stats[i][0], "top1": stats[i][1], "nll": stats[i][2], "nll_dense": stats[i][3],
                        "retraces": len(mine), "checks": sum(row_of(e, request0, lockstep) == i for e in checks),
                        "retrace_steps": [t.get("step") for t in mine], "skipped": skipped, "tokens": tokens,
                        "batch_kinds": sorted({b["kind"] for b in batch})})
        return out

    def finalize(self, outputs):
        from dart.stats import bootstrap_ci

        outputs = self._outputs = [o for batch in outputs for o in batch]
        metrics: dict[str, float | None] = {}
        for kind, rows in self._subsets(outputs):
            metrics.update(self._aggregate(kind, rows, bootstrap_ci))
        self.by_kind = effective_by_kind(self._subsets(outputs))
        if any(len(o["batch_kinds"]) > 1 for o in outputs) and self.by_kind.get("all"):
            self.notes.append("effective sparsity per kind: not for kinds that shared batches with another kind "
                              "(eval.batching=clean keeps the kinds apart)")
        with open(self.ctx.run_dir / SAMPLES_FILE, "w") as f:
            for o in outputs:
                row = {k: v for k, v in o.items() if k not in ("nll", "nll_dense")}
                row.update(ppl=math.exp(o["nll"]), ppl_dense=math.exp(o["nll_dense"]), nll=o["nll"],
                           nll_dense=o["nll_dense"])
                f.write(json.dumps(row) + "\n")
        self.extra["per_sample"] = SAMPLES_FILE
        # compact per-sample figures in results.json too, for paired comparisons between runs (dart.tables.controls)
        self.extra["samples"] = compact(outputs)
        self.extra["bootstrap"] = {"method": "percentile", "resamples": self.resamples, "seed": self.seed,
                                   "level": 0.95, "unit": "sample"}
        return metrics

    def _subsets(self, outputs: list[dict]) -> list[tuple[str, list[dict]]]:
        """(kind, its rows) for every pair kind (built-in: switch and control, even if one is empty) and "all"."""
        kinds = ["switch", "control"] if self.user_pairs is None else []
        for o in outputs:
            if o["kind"] not in kinds:
                kinds.append(o["kind"])
        return [(k, [o for o in outputs if o["kind"] == k]) for k in kinds] + [("all", outputs)]

    # ------------------------------------------------------------------------- eval.matched
    def matched_sparsities(self, strategy) -> dict[str, float] | None:
        """The sparsity eval.matched's strategies run at on each kind's samples: the effective sparsity this run
        measured on that kind (matched compute per subset: a re-tracing run spends its dense tokens mostly on the
        two-topic pairs); {"all": the run's} where kinds shared batches. None, with a note, where there is nothing
        to match (the run is dense, or skipped nothing)."""
        if not self.matched:
            return None
        by_kind = self.by_kind or {}
        eff = by_kind.get("all")
        if strategy.name == "dense" or not eff:
            why = "the run is strategy=dense" if strategy.name == "dense" else "the run skipped no FFN work"
            self.notes.append(f"eval.matched={','.join(self.matched)}: no matched rows, {why}")
            return None
        kinds = {o["kind"] for o in self._outputs}
        if all(by_kind.get(k) for k in kinds):
            return {k: float(by_kind[k]) for k in sorted(kinds)}
        self.notes.append("eval.matched: at the run's effective sparsity over all samples (its kinds shared batches "
                          "or one skipped nothing)")
        return {"all": float(eff)}

    def score_kind(self, strategy, kind: str, on_step=None) -> list[dict]:
        """The run's batches of one kind ("all": every batch) again under `strategy` (attached): their rows."""
        outputs = []
        for batch in self.batches():
            if kind == "all" or all(s["kind"] == kind for s in batch):
                outputs += self._score(batch, strategy)
                if on_step is not None:
                    on_step()
        return outputs

    def matched_row(self, outputs: list[dict]) -> dict:
        """eval.matched's strategy on the run's samples (`outputs`, as score_kind's): its metrics as finalize's,
        its compact per-sample rows, its effective sparsity per kind, and per subset the paired difference of KL,
        run - matched, with a bootstrap interval over the same samples (dart.stats.paired_diff_ci)."""
        from dart.stats import bootstrap_ci, paired_diff_ci

        outputs = sorted(outputs, key=lambda o: o["index"])
        metrics: dict[str, float | None] = {}
        paired: dict[str, float | None] = {}
        theirs = {o["index"]: o["kl"] for o in outputs}
        for kind, rows in self._subsets(outputs):
            metrics.update(self._aggregate(kind, rows, bootstrap_ci))
            mine = [o for o in self._outputs if o["kind"] == kind or kind == "all"]
            a, b = [o["kl"] for o in mine], [theirs[o["index"]] for o in mine]
            lo, hi = paired_diff_ci(a, b, resamples=self.resamples, seed=self.seed) if a else (None, None)
            paired.update({f"{kind}/kl": (sum(a) - sum(b)) / len(a) if a else None, f"{kind}/kl_lo": lo,
                           f"{kind}/kl_hi": hi, f"{kind}/n": float(len(a))})
        return {"metrics": metrics, "paired": paired, "samples": compact(outputs),
                "effective_by_kind": effective_by_kind(self._subsets(outputs))}

    def _aggregate(self, kind: str, rows: list[dict], bootstrap_ci) -> dict[str, float | None]:
        """`<kind>/<metric>`, `<kind>/<metric>_lo`, `_hi` (95% bootstrap interval over samples) and `<kind>/n`.
        Perplexities: exp of the mean per-token NLL (every sample scores `length` tokens), interval likewise."""
        out: dict[str, float | None] = {f"{kind}/n": float(len(rows))}
        for metric in METRICS:
            key = {"ppl": "nll", "ppl_dense": "nll_dense"}.get(metric, metric)
            vals = [float(r[key]) for r in rows]
            if not vals:
                out.update({f"{kind}/{metric}": None, f"{kind}/{metric}_lo": None, f"{kind}/{metric}_hi": None})
                continue
            m = sum(vals) / len(vals)
            lo, hi = bootstrap_ci(vals, resamples=self.resamples, seed=self.seed)
            if key != metric:
                m, lo, hi = math.exp(m), math.exp(lo), math.exp(hi)
            out.update({f"{kind}/{metric}": m, f"{kind}/{metric}_lo": lo, f"{kind}/{metric}_hi": hi})
        return out
