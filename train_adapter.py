"""Adapt a promptable model (SAM, MedSAM, SAM 2, samliver_tiny) to liver / liver-tumour CT.

    python train_adapter.py --method lora
    accelerate launch train_adapter.py --method lora
    accelerate launch --multi_gpu --num_processes 2 train_adapter.py --config configs/train/full.yaml

Everything is in `samliver.training`; see ``python train_adapter.py --help``.
"""

import sys

from samliver.training import main

if __name__ == "__main__":
    sys.exit(main())
