"""python -m dart.run [overrides]: the Hydra entry point (config: conf/config.yaml). Kept thin on purpose."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dart.errors import DartError
    from dart.pipeline import run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        run(cfg, Path(hc.runtime.output_dir), multirun=multirun)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
