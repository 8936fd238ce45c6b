"""Train the box U-Net that gives automatic box prompts (samliver.prompts.unet_boxes).

    python train_box_unet.py                          # the preset configs/box_unet/phantom.yaml
    accelerate launch train_box_unet.py --max-steps 600 --output-dir runs/box_unet_short
    bash scripts/train_box_unet.sh                    # reproduces weights/box_unet_phantom.*

Everything is in `samliver.training.box_unet`; see ``python train_box_unet.py --help``.
"""

import sys

from samliver.training.box_unet_config import main

if __name__ == "__main__":
    sys.exit(main())
