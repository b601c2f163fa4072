"""Train one job (or a sweep with -m) from the composed Hydra config (= the ptylab-train command).

    python train.py dose=1000 view=dense gridsize=2
    python train.py -m dose=1000,10000,100000 view=dense,sparse
"""

from ptylab.commands import train

if __name__ == "__main__":
    train()
