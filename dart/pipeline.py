"""One run: check the config, load the model, attach the strategy, evaluate through Lightning, write
results.json atomically, print the table. `dart.run` is the thin Hydra entry point around `run`."""
from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dart.config_checks import check_config
from dart.errors import DartError
from dart.results import RESULTS, SCHEMA, config_hash, is_complete, read_results, write_json_atomic

# keys that change where or how a run is reported, not what it computes: left out of the resume hash
NON_RESULT_KEYS = ("sweep_name", "resume", "print_table", "logger", "device")


def result_config(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in container.items() if k not in NON_RESULT_KEYS and k != "hydra"}


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("absl", "lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _trainer_device(device: str) -> tuple[str, Any]:
    if device.startswith("cuda"):
        return "gpu", [int(device.split(":")[1]) if ":" in device else 0]
    return ("mps", 1) if device == "mps" else ("cpu", 1)


def _make_logger(cfg: DictConfig, run_dir: Path, config: dict):
    """One W&B run per job: the full config, tags strategy/model/eval/sparsity; in a multirun grouped by the sweep
    (logger.group, default: sweep_name) and named by the job's overrides, so the runs of a sweep tell apart."""
    if cfg.logger.kind != "wandb":
        return None
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:  # an earlier job of this sweep failed with its run open: close it, never log into it
        wandb.run.finish(exit_code=1)
    multirun, job_overrides = _hydra_job()
    group = cfg.logger.group if cfg.logger.group is not None else (cfg.sweep_name if multirun else None)
    tags = [f"strategy={cfg.strategy.name}", f"model={cfg.model.name}", f"eval={cfg.eval.name}",
            f"sparsity={cfg.sparsity}", *list(cfg.logger.tags or [])]
    name = f"{cfg.model.name}-{cfg.strategy.name}-{cfg.sparsity}-{cfg.eval.name}"
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=str(group) if group else None,
        tags=tags, save_dir=str(run_dir), offline=cfg.logger.mode == "offline", job_type=str(cfg.eval.name),
        name=job_overrides if multirun and job_overrides else name, config=config,
    )


def _hydra_job() -> tuple[bool, str | None]:
    """(is this a multirun job, its override dirname) from Hydra; (False, None) outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, hc.job.override_dirname or None


def versions() -> dict[str, str]:
    import lightning
    import lm_eval
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "lm_eval": getattr(lm_eval, "__version__", "?")}


def run(cfg: DictConfig, run_dir: Path, multirun: bool = False) -> dict[str, Any] | None:
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
        failed = dict(base, status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=None if isinstance(e, DartError) else traceback.format_exc(limit=20))
        write_json_atomic(path, failed)
        if multirun and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            print(f"[dart] job failed, the sweep goes on: {run_dir}: {failed['error']}", flush=True)
            return failed
        raise


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a DartError raised by the target (a bad knob) reaches the user as itself,
    not wrapped in Hydra's "Error in call to target" with a traceback."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs, _convert_="all")
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, DartError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _run(cfg: DictConfig, run_dir: Path, results: dict, t0: float) -> dict[str, Any]:
    # instantiate first: their argument checks run before anything heavy is imported or any model loads
    strategy = build(cfg.strategy, sparsity=float(cfg.sparsity), ranking=cfg.ranking.name)
    evaluator = build(cfg.eval)

    _quiet_libraries()
    import lightning.pytorch as pl
    import torch

    from dart.evals.base import EvalContext
    from dart.lit import EvalModule, StrategyCallback
    from dart.models.loading import load_model, resolve_device

    device = resolve_device(cfg.device)
    pl.seed_everything(int(cfg.seed), verbose=False)
    torch.set_grad_enabled(False)

    loaded = load_model(cfg.model, device=device, dtype=cfg.dtype)
    t_loaded = time.perf_counter()
    ctx = EvalContext(model=loaded.model, tokenizer=loaded.tokenizer, strategy=strategy, run_dir=run_dir,
                      model_cfg=cfg.model, device=device)
    module = EvalModule(loaded.model, evaluator, ctx)
    logger = _make_logger(cfg, run_dir, results["config"])
    accelerator, devices = _trainer_device(device)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, logger=logger if logger is not None else False,
        callbacks=[StrategyCallback(strategy, loaded.tokenizer)], enable_checkpointing=False,
        enable_model_summary=False, inference_mode=True, default_root_dir=str(run_dir),
    )
    trainer.test(module, verbose=False)
    t_done = time.perf_counter()

    results.update(status="complete", model=loaded.info)
    summary = strategy.summary()
    results.update(summary)
    results["metrics"] = {f"{evaluator.name}/{k}": v for k, v in module.metrics.items()}
    if evaluator.extra:
        results["eval"] = evaluator.extra
    results["timing"] = {"load_s": round(t_loaded - t0, 3), "eval_s": round(t_done - t_loaded, 3),
                         "total_s": round(time.perf_counter() - t0, 3), **summary.get("timing", {})}
    results["notes"] = list(evaluator.notes)
    results["versions"] = versions()
    write_json_atomic(run_dir / RESULTS, results)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if logger is not None:
        _finish_wandb(logger, results)
    if cfg.print_table:
        from dart.report import print_run

        print_run(results, run_dir)
    return results


def _finish_wandb(logger, results: dict) -> None:
    try:
        exp = logger.experiment
        flat = {k: v for k, v in results["metrics"].items() if v is not None}
        sp = results.get("sparsity") or {}
        flat.update({f"sparsity/{k}": sp[k] for k in ("target", "achieved") if isinstance(sp.get(k), (int, float))})
        ov = results.get("overhead") or {}
        flat.update({f"overhead/{k}": v for k, v in ov.items() if isinstance(v, (int, float))})
        exp.summary.update(flat)
        exp.finish()
    except Exception as e:  # logging must never lose a finished result
        print(f"[dart] W&B summary not written: {e}")
