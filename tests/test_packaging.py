"""The wheel maps adapters/, prompts/, weights/ and configs/ into the samliver namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("samliver-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("samliver/prompts/types.py", "samliver/adapters/__init__.py",
                     "samliver/weights/manifest.json", "samliver/configs/phantom/tiny.yaml",
                     "samliver/data/phantom.py", "samliver/cli/main.py",
                     # the bundled demo weights: base, box U-Net, the main job's liver-tumour adapter
                     "samliver/weights/samliver_tiny.safetensors", "samliver/weights/samliver_tiny.json",
                     "samliver/weights/box_unet_phantom.safetensors",
                     "samliver/weights/samliver_tiny_liver_tumor/adapter_model.safetensors",
                     "samliver/weights/samliver_tiny_liver_tumor/adapter_config.json"):
        assert expected in names, expected
    top_level = {n.split("/")[0] for n in names}
    assert not top_level & {"prompts", "adapters", "weights", "configs", "tests", "bench"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "samliver = samliver.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
