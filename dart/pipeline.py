"""One run: check the config, load the model, attach the strategy, evaluate through Lightning (then, with
`eval.matched`, a second strategy at the run's effective sparsity on the same samples), write results.json
atomically, print the table. `dart.run` is the thin Hydra entry point around `run`."""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dart import signals
from dart.compose import instantiate
from dart.config_checks import check_config
from dart.runtime import cpu, quiet_libraries, versions
from dart.errors import DartError
from dart.results import RESULTS, SCHEMA, config_hash, is_complete, read_results, write_json_atomic

# keys that change where or how a run is reported, not what it computes: left out of the resume hash
NON_RESULT_KEYS = ("sweep_name", "resume", "print_table", "progress_s", "logger", "device", "dense_cache")


def result_config(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in container.items() if k not in NON_RESULT_KEYS and k != "hydra"}


def _trainer_device(device: str) -> tuple[str, Any]:
    if device.startswith("cuda"):
        return "gpu", [int(device.split(":")[1]) if ":" in device else 0]
    return ("mps", 1) if device == "mps" else ("cpu", 1)


def make_logger(cfg: DictConfig, run_dir: Path, config: dict):
    """One W&B run per job: the full config, tags strategy/model/eval/sparsity; in a multirun grouped by the sweep
    (logger.group, default: sweep_name) and named by the job's overrides, so the runs of a sweep tell apart."""
    if cfg.logger.kind != "wandb":
        return None
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:  # an earlier job of this sweep failed with its run open: close it, never log into it
        wandb.run.finish(exit_code=1)
    multirun, job_overrides = _hydra_job()
    group = wandb_group(cfg.logger.group, multirun, sweep_name=cfg.get("sweep_name"),
                        sweep_name_given=sweep_name_given(cfg), sweep_dir=_hydra_sweep_dir())
    random = cfg.model.get("init") == "random" and not cfg.model.get("path")
    tags = [f"strategy={cfg.strategy.name}", f"model={cfg.model.name}", f"eval={cfg.eval.name}",
            f"sparsity={cfg.sparsity}", *(["init=random"] if random else []), *list(cfg.logger.tags or [])]
    name = f"{cfg.model.name}{'-random' if random else ''}-{cfg.strategy.name}-{cfg.sparsity}-{cfg.eval.name}"
    logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=str(group) if group else None,
        tags=tags, save_dir=str(run_dir), offline=cfg.logger.mode == "offline", job_type=str(cfg.eval.name),
        name=job_overrides if multirun and job_overrides else name, config=config,
    )
    # Lightning always passes `anonymous` (None unless asked for) to wandb.init, and wandb >= 0.19 warns about the
    # setting whatever its value: leave it out (dart never logs anonymously)
    logger._wandb_init.pop("anonymous", None)
    return logger


def wandb_group(group, multirun: bool, sweep_name=None, sweep_name_given: bool = False, sweep_dir=None) -> str | None:
    """The W&B group of a job: `logger.group` if set; in a multirun the sweep's name if one was given (experiments
    give one), else the name of the sweep folder (`hydra.sweep.dir=/x/mysweep` -> "mysweep"), so that all jobs of
    one sweep share a group; no group for a single run."""
    if group is not None:
        return str(group)
    if not multirun:
        return None
    if sweep_name_given and sweep_name:
        return str(sweep_name)
    if sweep_dir:
        return Path(str(sweep_dir)).name or str(sweep_dir)
    return str(sweep_name) if sweep_name else None


def sweep_name_given(cfg: DictConfig) -> bool:
    """Whether sweep_name was set (on the command line or by an experiment), not the timestamp default."""
    if "sweep_name" not in cfg:
        return False
    raw = cfg._get_node("sweep_name")._value()
    return not (isinstance(raw, str) and raw.startswith("${now:"))


def _hydra_sweep_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return str(HydraConfig.get().sweep.dir)


def _hydra_job() -> tuple[bool, str | None]:
    """(is this a multirun job, its override dirname) from Hydra; (False, None) outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, hc.job.override_dirname or None


def _sparsity_overridden() -> bool:
    """Whether `sparsity=...` is among this job's command-line overrides (a sweep over it, or set by hand)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").split("=", 1)[0] == "sparsity" for o in HydraConfig.get().overrides.task)


def dense_sparsity_note(cfg: DictConfig) -> str | None:
    """strategy=dense with a sparsity asked for on the command line: dense ignores it (said once, stored per job)."""
    if cfg.strategy.get("name") != "dense" or not _sparsity_overridden():
        return None
    try:
        if float(cfg.sparsity) == 0.0:
            return None
    except (TypeError, ValueError):
        return None
    return ("strategy=dense ignores sparsity: every neuron runs, whatever sparsity the command asks for "
            "(a sweep over sparsity runs the same dense model each time; +variant=dense runs it once at sparsity 0)")


def run(cfg: DictConfig, run_dir: Path, multirun: bool = False) -> dict[str, Any] | None:
    signals.check()  # a stop signal that arrived during the previous job of a sweep starts no new one
    t0 = time.perf_counter()
    config = result_config(cfg)
    chash = config_hash(config)
    path = run_dir / RESULTS
    try:
        check_config(cfg)
    except DartError as e:
        if not multirun:
            raise
        # one job of a sweep with a bad value (say sparsity=0.5,1.5): record it and let the others run
        failed = {"schema": SCHEMA, "status": "failed", "error": f"{type(e).__name__}: {e}", "config": config,
                  "config_hash": chash}
        write_json_atomic(path, failed)
        print(f"[dart] job failed, the sweep goes on: {run_dir}: {e}", flush=True)
        return failed
    if cfg.resume and is_complete(read_results(path), chash):
        print(f"[dart] {run_dir}: finished earlier with the same config; skipping (resume=false to recompute)")
        return read_results(path)
    base = {"schema": SCHEMA, "status": "running", "error": None, "config": config, "config_hash": chash}
    try:
        return _run(cfg, run_dir, base, t0)
    except BaseException as e:
        if signals.received() is not None and not isinstance(e, signals.Terminated):
            e = signals.Terminated(signals.received())  # e.g. Lightning's own SIGTERMException, which has no text
        failed = dict(base, status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=None if isinstance(e, (DartError, signals.Terminated)) else traceback.format_exc(limit=20))
        write_json_atomic(path, failed)
        if isinstance(e, signals.Terminated):
            print(f"[dart] {e}: {path} records the run as failed; the same command recomputes it", flush=True)
            raise e from None
        if multirun and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            print(f"[dart] job failed, the sweep goes on: {run_dir}: {failed['error']}", flush=True)
            return failed
        raise


def _run(cfg: DictConfig, run_dir: Path, results: dict, t0: float) -> dict[str, Any]:
    # instantiate first: their argument checks run before anything heavy is imported or any model loads
    strategy = instantiate(cfg.strategy)  # sparsity and ranking reach it by interpolation (conf/strategy/_engine.yaml)
    evaluator = instantiate(cfg.eval)

    quiet_libraries()
    import lightning.pytorch as pl
    import torch

    from dart.evals.base import EvalContext
    from dart.lit import EvalModule, PlainProgress, StrategyCallback
    from dart.models.loading import load_model, resolve_device

    device = resolve_device(cfg.device)
    pl.seed_everything(int(cfg.seed), verbose=False)
    torch.set_grad_enabled(False)
    note = dense_sparsity_note(cfg)
    if note:
        from dart.report import say_once

        say_once(note)

    loaded = load_model(cfg.model, device=device, dtype=cfg.dtype)
    t_loaded = time.perf_counter()
    signals.check()
    dense_cache = None
    if cfg.get("dense_cache"):  # fingerprinted now, before the strategy attaches (compaction reorders weights)
        from dart.evals.dense_cache import DenseCache

        dense_cache = DenseCache(loaded.model)
    ctx = EvalContext(model=loaded.model, tokenizer=loaded.tokenizer, strategy=strategy, run_dir=run_dir,
                      model_cfg=cfg.model, device=device, dense_cache=dense_cache)
    module = EvalModule(loaded.model, evaluator, ctx)
    logger = make_logger(cfg, run_dir, results["config"])
    accelerator, devices = _trainer_device(device)
    callbacks = [StrategyCallback(strategy, loaded.tokenizer)]
    terminal = sys.stdout.isatty()
    if not terminal:  # nohup, SLURM, a pipe: Lightning's bar would show nothing until the end
        callbacks.append(PlainProgress(interval_s=float(cfg.get("progress_s", 30)), label=str(evaluator.name)))
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, logger=logger if logger is not None else False,
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=terminal,
        enable_model_summary=False, inference_mode=True, default_root_dir=str(run_dir),
    )
    stop_hook = signals.hook(loaded.model)  # SIGTERM / SIGUSR1: raise Terminated at the next forward
    try:
        trainer.test(module, verbose=False)
        t_done = time.perf_counter()
        matched = _matched(cfg, evaluator, strategy, ctx) if evaluator.matched else None
        t_matched = time.perf_counter()
    finally:
        stop_hook.remove()

    results.update(status="complete", model=loaded.info)
    summary = strategy.summary()
    results.update(summary)
    results["metrics"] = _named(evaluator, module.metrics)
    by_kind = evaluator.effective_by_kind()
    if by_kind and results.get("sparsity") is not None:
        results["sparsity"]["effective_by_kind"] = by_kind
    if evaluator.extra:
        results["eval"] = evaluator.extra
    if matched is not None:
        results["matched"] = matched
    results["timing"] = {"load_s": round(t_loaded - t0, 3), "eval_s": round(t_done - t_loaded, 3),
                         **({"matched_s": round(t_matched - t_done, 3)} if matched else {}),
                         "total_s": round(time.perf_counter() - t0, 3), **summary.get("timing", {})}
    if ctx.dense_cache is not None:  # dense_cache=true's, or the matched pass's in memory
        results["timing"]["dense_cache"] = ctx.dense_cache.summary()
    results["notes"] = ([note] if note else []) + list(evaluator.notes)
    results["versions"] = versions()
    results["cpu"] = cpu()  # numbers move slightly across CPUs (docs/results.md)
    from dart import kernels

    used = kernels.used()
    if used is not None:  # the run's generation decoded through the kernels (or was told why not)
        results["kernels"] = used
    write_json_atomic(run_dir / RESULTS, results)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if logger is not None:
        _finish_wandb(logger, results)
    if cfg.print_table:
        from dart.report import print_run

        print_run(results, run_dir)
    return results


def _named(evaluator, metrics: dict) -> dict:
    """Metrics as results.json holds them: "<eval name>/<metric>"."""
    return {f"{evaluator.name}/{k}": v for k, v in metrics.items()}


def _matched(cfg: DictConfig, evaluator, strategy, ctx) -> list[dict] | None:
    """eval.matched (the main job: static_prompt and teal): each strategy, with the command line's defaults and this
    run's ranking, scored on the evaluator's samples again, each kind's samples at the effective sparsity this run
    measured on that kind (matched compute per subset), against the same dense reference (the run's own strategy
    is skipped). results.json `matched`, one entry per strategy: strategy, sparsity (target: the run's effective;
    by_kind: the target and the effective of each kind), metrics as the run's, `paired` (run - matched, per
    subset, with a paired bootstrap interval), samples."""
    targets = evaluator.matched_sparsities(strategy)
    if targets is None:
        return None
    from dart.compose import build_strategy
    from dart.progress import PlainTicker

    out, ranking = [], cfg.ranking.name
    run_eff = (evaluator.effective_by_kind() or {}).get("all")
    for name in (n for n in evaluator.matched if n != strategy.name):
        said = ", ".join(f"{k} {v:.2%}" for k, v in targets.items())
        print(f"[dart] {evaluator.name}: {name} at the effective sparsity of {strategy.name} ({said}), on the same "
              "samples (eval.matched)", flush=True)
        ticker = PlainTicker(f"{evaluator.name} ({name})", len(evaluator.batches()), float(cfg.get("progress_s", 30)))
        outputs, achieved = [], {}
        for kind, sparsity in targets.items():
            other = build_strategy(name, sparsity=sparsity, ranking=ranking)
            other.attach(ctx.model, ctx.tokenizer)
            try:
                mine = evaluator.score_kind(other, kind, on_step=ticker.step)
            finally:
                other.detach()
            outputs += mine
            achieved[kind] = ((other.summary().get("sparsity") or {}).get("achieved"), len(mine))
        ticker.finish()
        row = evaluator.matched_row(outputs)
        by_kind = {k: {"target": targets.get(k, run_eff if k == "all" else targets.get("all")),
                       "effective": row["effective_by_kind"].get(k)} for k in row["effective_by_kind"]}
        known = [(a, n) for a, n in achieved.values() if a is not None]
        out.append({"strategy": name, "ranking": ranking,
                    "sparsity": {"target": run_eff, "effective": row["effective_by_kind"].get("all"),
                                 "achieved": sum(a * n for a, n in known) / sum(n for _, n in known) if known else None,
                                 "by_kind": by_kind},
                    "metrics": _named(evaluator, row["metrics"]), "paired": _named(evaluator, row["paired"]),
                    "samples": row["samples"]})
    if hasattr(ctx.dense_cache, "clear"):
        ctx.dense_cache.clear()  # the in-memory reference has served every strategy
    return out or None


def _finish_wandb(logger, results: dict) -> None:
    from dart.results import flat_summary

    try:
        exp = logger.experiment
        exp.summary.update(flat_summary(results))
        exp.summary.update({f"cpu/{k}": v for k, v in (results.get("cpu") or {}).items()})
        exp.finish()
    except Exception as e:  # logging must never lose a finished result
        print(f"[dart] W&B summary not written: {e}")
