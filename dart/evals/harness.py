"""The ten-benchmark evaluator: lm-evaluation-harness on the pruned model (`dart.evals.lm.DartLM`), the real
benchmarks where they load, else their offline stand-ins."""
from __future__ import annotations

from dart.evals.lm import DartLM  # noqa: F401  (re-exported: dart.evals.harness.DartLM)
from dart.errors import UnavailableError, choice_error
from dart.evals.base import Evaluator

SOURCES = ("auto", "real", "offline")


def _leaves(results: dict, name: str) -> list[str]:
    groups = results.get("group_subtasks", {})
    out, todo = [], [name]
    while todo:
        t = todo.pop(0)
        if groups.get(t):
            todo.extend(groups[t])
        else:
            out.append(t)
    return out


def summarize_results(results: dict, names: list[str], metrics=("acc", "acc_norm")) -> dict[str, float | None]:
    """Per task (or group) name: every metric as the macro average over its leaf tasks, plus the size-weighted
    (micro) average where there is more than one leaf."""
    res, n_samples = results.get("results", {}), results.get("n-samples", {})
    out: dict[str, float | None] = {}
    for name in names:
        leaves = [t for t in _leaves(results, name) if t in res]
        for metric in metrics:
            key = f"{metric},none"
            vals = [(res[t][key], n_samples.get(t, {}).get("effective", 0)) for t in leaves if key in res[t]]
            if not vals:
                continue
            out[f"{name}/{metric}"] = sum(v for v, _ in vals) / len(vals)
            if len(vals) > 1:
                total = sum(n for _, n in vals)
                out[f"{name}/{metric}_micro"] = sum(v * n for v, n in vals) / total if total else None
        out[f"{name}/n"] = float(sum(n_samples.get(t, {}).get("effective", 0) for t in leaves))
    return out


def per_doc_correctness(results: dict, metrics=("acc", "acc_norm")) -> dict[str, dict[str, str]]:
    """{leaf task: {metric: "0110..."}} from lm_eval.simple_evaluate(log_samples=True)'s samples, in doc_id order;
    a metric whose per-document values are not all 0/1 is left out."""
    from dart.stats import bits

    out: dict[str, dict[str, str]] = {}
    for task, samples in (results.get("samples") or {}).items():
        rows = sorted(samples, key=lambda s: s.get("doc_id", 0))
        for metric in metrics:
            vals = [s.get(metric) for s in rows]
            if rows and all(isinstance(v, (int, float)) and float(v) in (0.0, 1.0) for v in vals):
                out.setdefault(task, {})[metric] = bits(vals)
    return out


def stderr_metrics(results: dict, names: list[str], per_doc: dict, metrics=("acc", "acc_norm")) -> dict[str, float | None]:
    """`<name>/<metric>_stderr` for each task or group name: lm-eval's own stderr where it gives a number (it does not
    with bootstrap_iters=0), else the sample standard deviation of the per-document values / sqrt(n) (what lm-eval
    computes for a mean); a group's macro average combines its leaves' (sqrt(sum se^2) / k), its micro average pools
    the documents."""
    from dart.stats import combined_stderr, from_bits, stderr

    res = results.get("results", {})

    def lm_eval_se(task: str, metric: str):
        v = (res.get(task) or {}).get(f"{metric}_stderr,none")
        return float(v) if isinstance(v, (int, float)) else None

    out: dict[str, float | None] = {}
    for name in names:
        leaves = [t for t in _leaves(results, name) if t in res]
        for metric in metrics:
            if not any(f"{metric},none" in res[t] for t in leaves):
                continue
            docs = {t: from_bits(per_doc[t][metric]) for t in leaves if metric in per_doc.get(t, {})}
            ses = [lm_eval_se(t, metric) if lm_eval_se(t, metric) is not None else stderr(docs.get(t, []))
                   for t in leaves if f"{metric},none" in res[t]]
            own = lm_eval_se(name, metric) if len(leaves) > 1 else None
            out[f"{name}/{metric}_stderr"] = own if own is not None else (ses[0] if len(ses) == 1 else combined_stderr(ses))
            if len(leaves) > 1:
                out[f"{name}/{metric}_micro_stderr"] = stderr([v for t in leaves for v in docs.get(t, [])]) \
                    if len(docs) == len(leaves) else None
    return out


class Harness(Evaluator):
    """The ten benchmarks through lm-evaluation-harness (one Lightning step per benchmark).

    source=auto runs each real benchmark where its data can be had and its offline stand-in otherwise, saying so
    in one line per task; real: only real ones; offline: only the stand-ins."""

    name = "ten"

    def __init__(self, benchmarks=None, source="auto", limit=None, batch_size=8, bootstrap_iters=0, forcing="chunked",
                 name=None, **kwargs):
        super().__init__(name=name, limit=limit)
        from dart.engine.forcing import MODES as FORCING

        if forcing not in FORCING:
            raise choice_error("eval.forcing", forcing, FORCING)
        self.forcing = forcing
        from dart.evals.tasks import BENCHMARK_NAMES

        self.benchmarks = list(benchmarks or BENCHMARK_NAMES)
        for b in self.benchmarks:
            if b not in BENCHMARK_NAMES:
                raise choice_error("eval.benchmarks entry", b, BENCHMARK_NAMES)
        if source not in SOURCES:
            raise choice_error("eval.source", source, SOURCES)
        self.source, self.batch_size, self.bootstrap_iters = source, int(batch_size), int(bootstrap_iters)

    def _load_real(self, bench, why: str | None) -> str | None:
        """None if the real tasks of `bench` load here, else the reason (`why`: the hub is unreachable)."""
        import os

        from dart.evals.tasks import lm_eval_task_manager

        if why:  # only the local cache can serve: fail fast instead of retrying downloads
            os.environ["HF_DATASETS_OFFLINE"] = "1"
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from lm_eval.tasks import get_task_dict

            get_task_dict(list(bench.lm_eval_tasks), lm_eval_task_manager())
            return None
        except Exception as e:
            return why or f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        from dart.evals.tasks import benchmark, offline_task_manager

        from dart.hub import hub_reachable

        self._plan = []
        unreachable = hub_reachable() if self.source != "offline" else None
        for name in self.benchmarks:
            b = benchmark(name)
            if self.source in ("auto", "real"):
                why = self._load_real(b, unreachable)
                if why is None:
                    from dart.evals.tasks import lm_eval_task_manager

                    self._plan.append((name, list(b.lm_eval_tasks), b.num_fewshot, lm_eval_task_manager(), "real"))
                    continue
                if self.source == "real":
                    self.notes.append(f"{name}: real task not loadable here ({why}); not run")
                    continue
                self.notes.append(f"{name}: real task not loadable here ({why}); ran {b.offline_twin} instead "
                                  f"(lm-eval's {name} prompt on real offline items, not the benchmark)")
            self._plan.append((name, [b.offline_twin], b.num_fewshot, offline_task_manager(), "offline"))

    def batches(self):
        return self._plan

    # lm-eval's loggers: their records during a benchmark go to the run's lm_eval.log, not the console
    LM_EVAL_LOGGERS = ("lm_eval", "lm-eval", "datasets")

    @staticmethod
    def _captured(log_path):
        """A context manager that sends lm-eval's log records and everything written to stderr meanwhile (lm-eval's
        and datasets' progress bars, Python warnings) to `log_path` (appended), and yields a dict counting the log
        lines and warnings. An exception still propagates."""
        import contextlib
        import io
        import logging

        @contextlib.contextmanager
        def capture():
            buffer = io.StringIO()
            handler = logging.StreamHandler(buffer)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
            counts = {"lines": 0, "warnings": 0}

            class Count(logging.Filter):
                def filter(self, record):
                    counts["lines"] += 1
                    counts["warnings"] += int(record.levelno >= logging.WARNING)
                    return True

            handler.addFilter(Count())
            saved = []
            for name in Harness.LM_EVAL_LOGGERS:
                lg = logging.getLogger(name)
                saved.append((lg, list(lg.handlers), lg.propagate, lg.level))
                lg.handlers, lg.propagate = [handler], False
                lg.setLevel(logging.INFO)
            try:
                with contextlib.redirect_stderr(buffer):
                    yield counts
            finally:
                for lg, handlers, propagate, level in saved:
                    lg.handlers, lg.propagate = handlers, propagate  # also drops a handler lm-eval added meanwhile
                    lg.setLevel(level)
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(buffer.getvalue())

        return capture()

    def step(self, item):
        import time
        from pathlib import Path

        import lm_eval

        name, tasks, shots, manager, kind = item
        run_dir = getattr(self.ctx, "run_dir", None)
        log_path = Path(run_dir) / "lm_eval.log" if run_dir is not None else None
        t0 = time.perf_counter()
        with self._captured(log_path) as counts:  # lm-eval's ~80 lines per benchmark: one line here, all in the log
            lm = DartLM(self.ctx.model, self.ctx.tokenizer, self.ctx.strategy, batch_size=self.batch_size, forcing=self.forcing)
            results = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, num_fewshot=shots, limit=self.limit, task_manager=manager,
                bootstrap_iters=self.bootstrap_iters, log_samples=True,  # per-document correctness, for the CIs
            )
        where = f" in {log_path}" if log_path is not None else ""
        print(f"[dart] lm-eval {name} ({', '.join(tasks)}, {kind}, {shots}-shot): {time.perf_counter() - t0:.1f} s, "
              f"{counts['lines']} log lines ({counts['warnings']} warnings){where}", flush=True)
        per_doc = per_doc_correctness(results)
        results.pop("samples", None)  # the logged requests themselves are not kept
        metrics = summarize_results(results, tasks)
        metrics.update(stderr_metrics(results, tasks, per_doc))
        return {"benchmark": name, "kind": kind, "tasks": tasks, "metrics": metrics, "per_doc": per_doc,
                "scoring": dict(lm.stats)}

    def finalize(self, outputs):
        metrics: dict[str, float | None] = {}
        accs = []
        for o in outputs:
            metrics.update(o["metrics"])
            vals = [o["metrics"].get(f"{t}/acc") for t in o["tasks"]]
            vals = [v for v in vals if v is not None]
            if vals:
                accs.append(sum(vals) / len(vals))
        metrics["average/acc"] = sum(accs) / len(accs) if accs else None
        # the average's standard error (benchmarks independent; each benchmark the mean of its tasks) and its n
        from dart.stats import combined_stderr

        ses = [combined_stderr([o["metrics"].get(f"{t}/acc_stderr") for t in o["tasks"]]) for o in outputs]
        metrics["average/acc_stderr"] = combined_stderr(ses) if accs and len(accs) == len(outputs) else None
        metrics["average/n"] = float(sum(o["metrics"].get(f"{t}/n") or 0.0 for o in outputs for t in o["tasks"]))
        # per-document 0/1 correctness of every leaf task ("0110...", in doc_id order): CIs and paired comparisons
        self.extra["per_doc"] = {t: v for o in outputs for t, v in (o.get("per_doc") or {}).items()}
        self.extra["sources"] = {o["benchmark"]: {"kind": o["kind"], "tasks": o["tasks"]} for o in outputs}
        # requests, the prompts they share (each run once), rows scored, requests scored in one pass (compat)
        self.extra["scoring"] = {k: sum(o["scoring"][k] for o in outputs) for k in (outputs[0]["scoring"] if outputs else {})}
        proto = getattr(getattr(self.ctx.strategy, "spec", None), "protocol", None)
        self.extra["protocol"] = proto
        return metrics
