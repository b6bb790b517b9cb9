"""lm-evaluation-harness with a pruned model: `DartLM` (an HFLM whose loglikelihood path knows where each
request's prompt ends) and the `Harness` evaluator (the ten benchmarks, or their offline stand-ins).

A multiple-choice request is ONE forward over (context + continuation)[:-1]. Under protocol=causal the engine
takes its statistics from the prompt (context[:-1]) and prunes from the last context position on, the positions
that predict the continuation (GRIFFIN's classification mode); compat traces and prunes every position in the
same pass, as published. Every row of a batch gets its own prompt length, statistics and masks, and padding
never enters the statistics, so the batch size does not change results. Where the drift detector could act
inside a continuation (DART under causal with m + W <= its length), that request is run exactly as teacher-forced
decoding, one token per forward; compat always scores in one forward, as published.
"""
from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm


class DartLM(HFLM):
    def __init__(self, model, tokenizer, strategy, batch_size: int = 1, max_length: int | None = None, **kwargs):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size), max_length=max_length,
                         device=str(next(model.parameters()).device), **kwargs)
        self.strategy = strategy
        self.exact_requests = 0

    @property
    def controller(self):
        return getattr(self.strategy, "controller", None)

    def _needs_decode(self, cont_len: int) -> bool:
        c = self.controller
        if c is None or c.detector is None or c.spec.protocol == "compat":
            return False  # compat is the published same-pass scoring: one forward, the detector never acts
        return cont_len >= max(c.spec.masking_step, 1) + c.detector.W

    def _batch_logits(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        if self.controller is not None:
            return self.controller.score(self.model, ids, prompt_len, attention_mask=mask)
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def _decode_logits(self, tokens: list[int], prompt_len: int) -> torch.Tensor:
        """Logits (T-1, V) of one request run as prompt + teacher-forced decoding (the detector live)."""
        from dart.evals.decoding import teacher_force

        ids = torch.tensor([tokens], device=self.device)
        out = torch.empty(len(tokens) - 1, self.model.config.vocab_size, device=self.device)

        def take(logits, start):
            out[start : start + logits.shape[1]] = logits[0, :, : out.shape[1]].float()

        teacher_force(self.model, ids, prompt_len, take)
        return out

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        def key(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=key)
        bs = int(override_bs or (self.batch_size if self.batch_size != "auto" else 1))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood")
        for chunk in order.get_batched(n=bs):
            inputs, conts, prompts = [], [], []
            for _, ctx, cont in chunk:
                full = (ctx + cont)[-(self.max_length + 1) :]
                inp = full[:-1]
                inputs.append(inp)
                conts.append(cont)
                prompts.append(len(inp) - len(cont) + 1)  # the context's length within the input
            T = max(len(x) for x in inputs)
            ids = torch.full((len(inputs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(inputs), T), dtype=torch.long)
            for i, x in enumerate(inputs):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            exact = [self._needs_decode(len(c)) for c in conts]
            batched = [i for i, e in enumerate(exact) if not e]
            rows: dict[int, torch.Tensor] = {}
            if batched:  # one forward over the requests that are not decoded (the decoded ones would be wasted)
                width = max(len(inputs[i]) for i in batched)
                sel = torch.tensor(batched, device=self.device)
                out = self._batch_logits(ids[sel, :width], mask[sel, :width],
                                         torch.tensor([prompts[i] for i in batched], device=self.device))
                rows = {i: out[j] for j, i in enumerate(batched)}
            scores = []
            for i, (inp, cont) in enumerate(zip(inputs, conts)):
                if exact[i]:
                    self.exact_requests += 1
                    # prompt = context[:-1]; the last context token is the first teacher-forced decode input
                    row = self._decode_logits(inp + [0], max(1, prompts[i] - 1))[: len(inp)]
                else:
                    row = rows[i][: len(inp)].float()
                lp = row[len(inp) - len(cont) :].log_softmax(-1)
                target = torch.tensor(cont, device=lp.device)
                scores.append(torch.stack([lp.gather(-1, target[:, None]).sum(), (lp.argmax(-1) == target).all().float()]))
            for logprob, greedy in torch.stack(scores).tolist():  # one device read per batch
                results.append((logprob, greedy > 0.5))
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)


# ----------------------------------------------------------------------------- the ten-benchmark evaluator
from dart.errors import UnavailableError, choice_error  # noqa: E402
from dart.evals.base import Evaluator  # noqa: E402

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


class Harness(Evaluator):
    """The ten benchmarks through lm-evaluation-harness (one Lightning step per benchmark).

    source=auto runs each real benchmark where its data can be had and its offline stand-in otherwise, saying so
    in one line per task; real: only real ones; offline: only the stand-ins."""

    name = "ten"

    def __init__(self, benchmarks=None, source="auto", limit=None, batch_size=8, bootstrap_iters=0, name=None, **kwargs):
        super().__init__(name=name, limit=limit)
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

        from dart.data.hub import hub_reachable

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

    def step(self, item):
        import logging

        import lm_eval

        name, tasks, shots, manager, kind = item
        logging.getLogger("lm-eval").setLevel(logging.WARNING)
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        lm = DartLM(self.ctx.model, self.ctx.tokenizer, self.ctx.strategy, batch_size=self.batch_size)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=shots, limit=self.limit, task_manager=manager,
            bootstrap_iters=self.bootstrap_iters, log_samples=False, verbosity="WARNING",
        )
        return {"benchmark": name, "kind": kind, "tasks": tasks,
                "metrics": summarize_results(results, tasks), "exact_requests": lm.exact_requests}

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
        self.extra["sources"] = {o["benchmark"]: {"kind": o["kind"], "tasks": o["tasks"]} for o in outputs}
        self.extra["decoded_requests"] = sum(o["exact_requests"] for o in outputs)
        proto = getattr(getattr(self.ctx.strategy, "spec", None), "protocol", None)
        self.extra["protocol"] = proto
        return metrics
