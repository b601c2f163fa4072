"""Compare finished runs (and the LSQML reference, where pty-chi is installed) in one table and figure.

    python scripts/compare.py runs=[RUN_A,RUN_B] output_dir=DIR [lsqml.epochs=200] [lsqml.enabled=false]
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ptylab.compare import compare


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    rows = compare(list(cfg.runs), Path(cfg.output_dir), cfg.lsqml)
    print((Path(cfg.output_dir) / "comparison.md").read_text(), end="")
    print(f"wrote {cfg.output_dir}/comparison.csv, comparison.md, comparison.png ({len(rows)} rows)")


if __name__ == "__main__":
    main()
