"""Reconstruct a dataset from a model bundle alone (no config or checkpoint needed).

    python scripts/reconstruct.py bundle=RUN/wts.h5.zip data=FILE.npz output_dir=DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ptylab.bundle import BundleError, load_bundle
from ptylab.data import DataError, read_dataset
from ptylab.inference import reconstruct_from_bundle, write_reconstruction


@hydra.main(version_base="1.3", config_path="../conf", config_name="reconstruct")
def main(cfg: DictConfig) -> None:
    try:
        bundle = load_bundle(cfg.bundle)
        data = read_dataset(cfg.data)
    except (BundleError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    stitched = reconstruct_from_bundle(bundle, data, cfg.batch_size, cfg.device)
    out = write_reconstruction(Path(cfg.output_dir), stitched, f"{Path(cfg.data).name} from {bundle.sha256[:12]}")
    print(f"wrote {out} (object {stitched.obj.shape}, bundle sha256 {bundle.sha256})")


if __name__ == "__main__":
    main()
