"""Where a gain comes from (docs/method.md section 9): a sweep of {static_prompt, griffin, dart} x
strategy.allocation {uniform, auto} x strategy.protocol {causal, compat} on the ten benchmarks, as two tables:

- the rows: each (strategy, allocation, protocol) with its average accuracy ± 95% interval and per benchmark;
- what each factor adds, in accuracy points ± 95% interval (paired over the same documents where the runs stored
  per-document results): the protocol (compat - causal, same strategy and allocation), the allocation (auto -
  uniform, same strategy and protocol), re-tracing (dart - static_prompt, same allocation and protocol).

What cannot differ by construction is said, not printed as a finding: on benchmarks whose answers are one token
(ONE_TOKEN) nothing is decoded after the prompt's mask, so the drift detector can never act and dart ==
static_prompt there (cells "≡"); under protocol=compat nothing is decoded on any benchmark, so dart ==
static_prompt everywhere (one merged row, no re-tracing line). Results that are identical although they could
differ are found empirically (every metric equal) and annotated; results that differ although they cannot are
flagged (⚠) as a bug to look at.
"""
from __future__ import annotations

from dart.models.names import model_name, model_sort_key
from dart.tables import accuracy, sparsity
from dart.tables.collect import Record
from dart.tables.labels import strategy_name
from dart.tables.render import MISSING, Table

STRATEGIES = ("static_prompt", "griffin", "dart")
ALLOCATIONS = ("uniform", "auto")
PROTOCOLS = ("causal", "compat")
ONE_TOKEN = ("boolq", "rte", "mmlu", "gpqa", "medmcqa")  # one-token answers: a letter, yes/no, True/False
SAME = "≡"
FLAG = "⚠"
REASONS = {"compat": "under protocol=compat the mask is traced from context and answer in one pass and nothing is "
                     "decoded, so the drift detector never acts",
           "one-token": "every benchmark here has one-token answers: nothing is decoded after the prompt's mask, so "
                        "the drift detector never acts"}


def factors(r: Record) -> tuple[str, str, str]:
    s = r.config.get("strategy") or {}
    return r.strategy, str(s.get("allocation", "uniform")), str(s.get("protocol", "causal"))


def _order(f: tuple[str, str, str]) -> tuple:
    return tuple(opts.index(v) if v in opts else len(opts) for v, opts in zip(f, (STRATEGIES, ALLOCATIONS, PROTOCOLS))) + f


def applies(records: list[Record]) -> bool:
    """A decomposition sweep: runs of these strategies in which allocation or protocol takes two values."""
    rs = [r for r in records if r.strategy in STRATEGIES]
    return len({factors(r)[1] for r in rs}) > 1 or len({factors(r)[2] for r in rs}) > 1


def identical(a: Record, b: Record) -> bool:
    """Every metric equal (and the per-document results, where both runs stored them)."""
    if not (a.complete and b.complete) or a.metrics != b.metrics:
        return False
    pa, pb = ((x.results.get("eval") or {}).get("per_doc") for x in (a, b))
    return pa is None or pb is None or pa == pb


def _fixed(f: tuple[str, str, str], i: int) -> str:
    """What a comparison along factor i holds fixed: "DART, allocation=auto" etc."""
    parts = [strategy_name(f[0]), f"allocation={f[1]}", f"protocol={f[2]}"]
    return ", ".join(p for j, p in enumerate(parts) if j != i)


def cannot_differ(f: tuple[str, str, str], benches: list) -> str | None:
    """Why a dart row cannot differ from its static_prompt twin on ANY benchmark (None when it can somewhere)."""
    if f[2] == "compat":
        return "compat"
    if benches and all(b.name in ONE_TOKEN for b in benches):
        return "one-token"
    return None


def tables(records: list[Record], benches: list, metric: str = "acc") -> list[Table]:
    """The rows table and the "what each factor adds" table (one section per model and target sparsity)."""
    from dart.tables.build import benchmark_estimate, n_header, ordered

    rows, lines, notes, all_merged = [], [], [], []
    one_token = [b.name for b in benches if b.name in ONE_TOKEN]
    used_one_token = False
    groups: dict[tuple, dict[tuple, Record]] = {}
    for r in ordered([r for r in records if r.strategy in STRATEGIES]):
        cell = groups.setdefault((r.model, sparsity.target(r)), {})
        f = factors(r)
        if f in cell:
            notes.append(f"several runs of {r.display_model} / {strategy_name(f[0])}, allocation={f[1]}, protocol={f[2]} "
                         f"(other knobs differ): the decomposition uses {cell[f].label}, not {r.label}")
            continue
        cell[f] = r
    ests = {key: {f: [benchmark_estimate(r, b, metric) for b in benches] for f, r in cell.items()}
            for key, cell in groups.items()}
    flat = [e for by_f in ests.values() for e in by_f.values()]
    heads = [n_header(b.name, [e[i] for e in flat]) for i, b in enumerate(benches)]  # n in the header if uniform
    avg_head = n_header("Avg", [accuracy.mean_of(e) for e in flat])
    for (model, target), cell in sorted(groups.items(), key=lambda kv: (model_sort_key(kv[0][0]), kv[0][1] or 0)):
        est = ests[(model, target)]
        avg = {f: accuracy.mean_of(e) for f, e in est.items()}
        sp = MISSING if target is None else f"{100 * target:.0f}%"
        merged: dict[tuple, str] = {}
        for f in sorted(cell, key=_order):
            r, twin = cell[f], cell.get(("static_prompt",) + f[1:]) if f[0] == "dart" else None
            twin = twin if twin is not None and twin.complete and r.complete else None  # judge finished runs only
            label, cells = strategy_name(f[0]), [accuracy.fmt(e, with_n=heads[i][1]) for i, e in enumerate(est[f])]
            why = cannot_differ(f, benches) if twin is not None else None
            if why:
                if all(a.same_as(b) for a, b in zip(est[f], est[("static_prompt",) + f[1:]])):
                    merged[f] = why
                    continue
                label += f" {FLAG}"
                notes.append(f"{FLAG} {r.display_model} {sp}, allocation={f[1]}, protocol={f[2]}: DART differs from "
                             f"Static (prompt) although they cannot differ ({REASONS[why]}): a bug to look at.")
            elif twin is not None:
                for i, b in enumerate(benches):
                    if b.name in ONE_TOKEN and est[f][i].value is not None:
                        if est[f][i].same_as(est[("static_prompt",) + f[1:]][i]):
                            cells[i], used_one_token = SAME, True
                        else:
                            cells[i] += f" {FLAG}"
                            notes.append(f"{FLAG} {r.display_model} {sp} DART ({f[1]}, {f[2]}) differs from Static "
                                         f"(prompt) on {b.name}, whose answers are one token (they cannot differ): "
                                         "a bug to look at.")
            rows.append([model_name(model), sp, label, f[1], f[2]] + sparsity.cells(r)
                        + [accuracy.fmt(avg[f], with_n=avg_head[1])] + cells)
        all_merged += list(merged.values())
        for f in merged:  # the static_prompt row stands for both
            for row in rows:
                if row[:5] == [model_name(model), sp, strategy_name("static_prompt"), f[1], f[2]]:
                    row[2] = f"{strategy_name('static_prompt')} {SAME} DART"
        # what each factor adds
        for i, (what, a_val, b_val) in enumerate((("strategy", "dart", "static_prompt"), ("allocation", "auto", "uniform"),
                                                  ("protocol", "compat", "causal"))):
            for f in sorted(cell, key=_order):
                if f[i] != b_val:
                    continue
                g = f[:i] + (a_val,) + f[i + 1:]
                if g not in cell:
                    continue
                name = {"strategy": "re-tracing: DART − Static (prompt)", "allocation": "allocation: auto − uniform",
                        "protocol": "protocol: compat − causal"}[what]
                fixed = _fixed(f, i)
                if what == "strategy" and merged.get(g):
                    lines.append([model_name(model), sp, name, fixed, f"0 by construction ({merged[g]})"]
                                 + [SAME] * len(benches))
                    continue
                d = [accuracy.diff(x, y) for x, y in zip(est[g], est[f])]
                cells = [accuracy.fmt(e, signed=True) for e in d]
                if what == "strategy" and f[2] == "causal":
                    cells = [SAME if b.name in ONE_TOKEN and est[g][j].same_as(est[f][j]) else c
                             for j, (b, c) in enumerate(zip(benches, cells))]
                if identical(cell[g], cell[f]):
                    notes.append(f"{cell[g].display_model} {sp}, {name} with {fixed}: the two runs gave identical "
                                 "results (every metric equal): this factor changed nothing here.")
                    name += " (identical results)"
                lines.append([model_name(model), sp, name, fixed, accuracy.fmt(accuracy.mean_diff(d), signed=True)] + cells)
    if not rows:
        return []
    head = [h for h, _ in heads]
    main_notes = [accuracy.CI_NOTE + " Avg: the mean over the benchmark columns."]
    if used_one_token:
        main_notes.append(f"{SAME}: DART equals Static (prompt) here by construction: on {', '.join(one_token)} the answer "
                          "is one token, so nothing is decoded after the prompt's mask and the drift detector can never act "
                          "(blanked: not a finding).")
    for why in dict.fromkeys(w for w in all_merged):
        main_notes.append(f"Static (prompt) {SAME} DART ({why}): {REASONS[why]}, so DART and Static (prompt) cannot "
                          "differ on any benchmark: one row for both, not two findings.")
    main_notes += sparsity.notes(records)
    rows_t = Table(title=f"Decomposition: strategy × allocation × protocol ({metric}, %)",
                   columns=["Model", "Sparsity", "Strategy", "allocation", "protocol"] + sparsity.HEADERS
                   + [avg_head[0]] + head,
                   rows=rows, notes=main_notes + notes, name=f"decomposition_{metric}")
    out = [rows_t]
    if lines:
        line_notes = ["Δ in accuracy points, ± its 95% interval (paired over the same documents where both runs stored "
                      "per-document results, else from the two runs' standard errors). Avg Δ: the mean over the "
                      "benchmark columns (cells marked ≡ count as 0)."]
        if all_merged:
            line_notes.append("re-tracing \"0 by construction\": the two runs cannot differ (see the rows' notes); "
                              "not a finding.")
        out.append(Table(title=f"What each factor adds ({metric}, points)",
                         columns=["Model", "Sparsity", "what", "held fixed", "Avg Δ"] + head, rows=lines,
                         notes=line_notes, name=f"decomposition_gain_{metric}"))
    return out
