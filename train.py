"""Train one job (or a sweep with -m) from the composed Hydra config.

    python train.py dose=1000 view=dense gridsize=2
    python train.py -m dose=1000,10000,100000 view=dense,sparse
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import ptylab.config  # noqa: F401  (registers schemas and resolvers)
from ptylab.job import run_job, summary_line


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    record = run_job(cfg, hc.runtime.output_dir)
    if record["status"] == "rank-nonzero":  # DDP: rank zero reports for the job
        return str(record["status"])
    print(summary_line(record), flush=True)
    if record["status"] == "failed" and hc.mode == RunMode.RUN:
        # Bad input (config, files) is the user's to fix: one error line, exit 2; anything else is 1.
        if record.get("user_error"):
            print(f"error: {record['error'].split(': ', 1)[-1]}", file=sys.stderr, flush=True)
            sys.exit(2)
        sys.exit(1)
    return str(record["status"])


if __name__ == "__main__":
    main()
