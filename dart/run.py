"""python -m dart.run [overrides]: the Hydra entry point (config: conf/config.yaml). Kept thin on purpose.

Exit codes: 0 done; 2 a bad value or something unavailable (one line, `error: ...`); 128 + the signal number when
SIGTERM (143) or SIGUSR1 (138) stopped the run; 1 a multirun in which any job failed (after all jobs ran, one line
per failed job: dart.sweep)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dart.sweep import register_resolver

register_resolver()  # hydra.sweep.subdir's ${dart_dirname:...}: job folders one level deep

@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dart import signals
    from dart.errors import DartError
    from dart.pipeline import run

    signals.install()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return run(cfg, Path(hc.runtime.output_dir), multirun=multirun)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except signals.Terminated as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
