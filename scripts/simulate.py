"""Simulate the configured dataset and write it, its summary and a preview to ``output_dir``.

    python scripts/simulate.py dose=1000 output_dir=DIR [view=dense] [dataset=...] [seed=...]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import ptylab.config  # noqa: F401  (registers schemas and resolvers)
from ptylab.simulate_cli import run_simulate


@hydra.main(version_base="1.3", config_path="../conf", config_name="simulate")
def main(cfg: DictConfig) -> None:
    s = run_simulate(cfg)
    print(f"wrote {cfg.output_dir}: {s['positions']} positions "
          f"(train {s['splits']['train']['positions']}, test {s['splits']['test']['positions']})")
    for split, st in s["splits"].items():
        if "counts_per_pattern" in st:
            c = st["counts_per_pattern"]
            print(f"  {split}: counts per pattern mean {c['mean']:.1f} min {c['min']:.0f} max {c['max']:.0f}")
    view = s.get("view")
    if view:
        if view["skipped"]:
            print(f"SKIPPED view {view['view']}: {view['skip_reason']}")
        else:
            for split in ("train", "test"):
                v = view[split]
                print(f"  view {view['view']} {split}: kept {v['kept']}/{v['available']}, spacing "
                      f"{view['spacing']:.2f} px, median NN {v['median_nn_distance']:.2f} px, "
                      f"overlap {v['achieved_overlap']:.3f} (target {view['target_overlap']})")


if __name__ == "__main__":
    main()
