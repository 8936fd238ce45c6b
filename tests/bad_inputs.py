"""The bad-input corpus: every kind of broken input a user can hand samliver, as a table.

Each `Bad` case writes its input into a folder (nothing is committed: the files are made here), names
the Python API call with the exception and message it must raise, and the command line(s) that must
fail with one stderr line and exit 2. `tests/test_bad_inputs.py` runs the table.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import torch

import samliver
from samliver.adapters import AdapterError
from samliver.errors import (CheckpointError, CTReadError, DatasetError, MaskWriteError, NotCTError,
                             OutputFolderError, PromptError, UnknownModelError)
from samliver.training.config import ConfigError
from tests.bad_input_files import (RunsCode, body_hu, dicom_series, good_ct, liver_label, msd_dataset, nifti,
                                   plain_dataset, prompts_file, saved_adapter, tiny_state, yaml_file)

Paths = dict[str, Any]
BOX = ["--box", "1,4,4,20,20"]
TINY = ["--model", "samliver_tiny", "--checkpoint", "random"]


@dataclass(frozen=True)
class Bad:
    """One bad input.

    Attributes:
        id: the case's name in the test ids and the summary.
        make: writes the input into the folder it is given; returns named paths (``p["ct"]``, ...).
        api: the Python API call that must fail, given those paths (plus ``in``, ``out``).
        error: the exception type it must raise (a `SamliverError` subclass).
        says: regex its one-line message must match (and each command's stderr line too).
        argv: the command lines (``samliver ...`` or ``train_adapter.py ...`` when ``tool="train"``).
    """

    id: str
    make: Callable[[Path], Paths]
    api: Callable[[Paths], Any]
    error: type[Exception]
    says: str
    argv: Callable[[Paths], list[list[str]]]
    tool: str = "samliver"


# ------------------------------------------------------------------ command lines

def segment(p: Paths, *extra: str, ct: str = "ct", out: str = "mask.nii.gz") -> list[str]:
    return ["segment", str(p[ct]), *TINY, *extra, "-o", str(p["out"] / out)]


def evaluate_cmd(p: Paths, *extra: str, data: str = "data") -> list[str]:
    return ["evaluate", *TINY, "--data", str(p[data]), "--prompts", "box", "--no-figures", *extra,
            "-o", str(p["out"] / "run")]


def prepare_cmd(p: Paths, data: str = "data") -> list[str]:
    return ["data", "prepare", str(p[data]), "--quiet", "-o", str(p["out"] / "cache")]


def train_cmd(p: Paths, *extra: str) -> list[str]:
    return [*extra, "--output-dir", str(p["out"] / "run")]


def _evaluate_api(p: Paths, data: str = "data", **kwargs):
    from samliver.evaluation import evaluate

    return evaluate("samliver_tiny", str(p[data]), "box", p["out"] / "run", checkpoint="random", figures=False,
                    **kwargs)


def _segment_api(p: Paths, prompts: str = "prompts"):
    from samliver.prompts import read_prompts_file

    ct = samliver.load_ct(p["ct"])
    return samliver.Predictor(samliver.load_model("samliver_tiny", checkpoint="random")).segment_volume(
        ct, read_prompts_file(p[prompts]))


def _check_hu(p: Paths, key: str = "ct"):
    from samliver.io.hu import check_hu

    ct = samliver.load_ct(p[key])  # load_ct reads any scalar image: the HU check is the caller's
    check_hu(ct.array, p[key])


def _resolve(p: Paths):
    from samliver.training import resolve

    return resolve(p["config"], {"output_dir": str(p["out"] / "run")})


def _with(name: str, make: Callable[[Path], Any]) -> Callable[[Path], Paths]:
    """A maker that stores what ``make(folder)`` returns under ``name`` (plus a good CT as ``ct``)."""
    def build(folder: Path) -> Paths:
        paths = {"ct": good_ct(folder)}
        value = make(folder)
        if value is not None:
            paths[name] = value
        return paths
    return build


# ------------------------------------------------------------------ the corpus

def _nifti_cases() -> list[Bad]:
    def ct_case(case_id: str, make: Callable[[Path], Path], says: str, error=CTReadError) -> Bad:
        return Bad(case_id, lambda f: {"bad": make(f)}, lambda p: samliver.load_ct(p["bad"]), error, says,
                   lambda p: [segment(p, *BOX, ct="bad")])

    def raw(name: str, data: bytes) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            (folder / name).write_bytes(data)
            return folder / name
        return make

    def image(name: str, data: np.ndarray) -> Callable[[Path], Path]:
        return lambda folder: nifti(folder / name, data)

    def truncated(folder: Path) -> Path:
        noise = np.random.default_rng(0).integers(-1000, 1000, (24, 24, 24)).astype(np.int16)
        full = nifti(folder / "full.nii.gz", noise)
        cut = folder / "truncated.nii.gz"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        full.unlink()
        return cut

    def zero_affine(folder: Path) -> Path:
        image = nib.Nifti1Image(body_hu(), None)
        image.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=2)  # every voxel at one point
        image.set_qform(None, code=0)
        nib.save(image, folder / "flat_affine.nii.gz")
        return folder / "flat_affine.nii.gz"

    nan = body_hu().astype(np.float32)
    nan[5, 5, 1] = np.nan
    inf = body_hu().astype(np.float32)
    inf[0, 0, 0] = -np.inf
    cases = [
        ct_case("nifti-missing", lambda f: f / "missing.nii.gz", r"missing\.nii\.gz: no such file"),
        ct_case("nifti-empty-file", raw("empty.nii.gz", b""), r"empty\.nii\.gz: not a readable NIfTI"),
        ct_case("nifti-garbage", raw("garbage.nii.gz", b"this is not an image\n" * 20),
                r"garbage\.nii\.gz: not a readable NIfTI"),
        ct_case("nifti-gzip-of-text", raw("text.nii.gz", gzip.compress(b"hello " * 100)),
                r"text\.nii\.gz: not a readable NIfTI"),
        ct_case("nifti-truncated", truncated, r"truncated\.nii\.gz: cannot read the voxel data"),
        ct_case("nifti-nan", image("nan.nii.gz", nan), r"nan\.nii\.gz: 1 voxels are NaN or infinite"),
        ct_case("nifti-inf", image("inf.nii", inf), r"inf\.nii: 1 voxels are NaN or infinite"),
        ct_case("nifti-2d", image("flat.nii.gz", np.zeros((24, 24), np.int16)), r"flat\.nii\.gz: 2D image"),
        ct_case("nifti-4d", image("four.nii.gz", np.zeros((8, 8, 4, 3), np.int16)),
                r"four\.nii\.gz: 4D image of shape"),
        ct_case("nifti-wrong-suffix", raw("volume.mha", b"\0" * 64), r"volume\.mha: unsupported file type"),
        ct_case("nifti-zero-affine", zero_affine, r"flat_affine\.nii\.gz: the header's affine is degenerate"),
    ]
    not_ct = {"mr-range": (body_hu() + 1000).astype(np.float32) * 1.7,          # MR magnitudes, 0 .. ~1800
              "uint8": ((body_hu() + 1000) // 8).astype(np.uint8),             # an 8-bit export
              "raw-stored": (body_hu() + 1024).astype(np.int16),               # CT without its rescale intercept
              "normalised": ((body_hu() + 1000) / 1040.0).astype(np.float32)}  # [0, 1]
    for name, data in not_ct.items():
        cases.append(Bad(f"not-ct-{name}", lambda f, d=data, n=name: {"ct": nifti(f / f"{n}.nii.gz", d)}, _check_hu,
                         NotCTError, rf"{name}\.nii\.gz: intensities .* do not look like CT in HU",
                         lambda p: [segment(p, *BOX)]))
    mr = not_ct["mr-range"]
    cases.append(Bad("not-ct-in-a-dataset", lambda f: {"data": plain_dataset(f / "ds", image=mr)},
                     lambda p: samliver.data.load_dataset(p["data"])[0], DatasetError,
                     r"case\.nii\.gz: intensities .* do not look like CT in HU",
                     lambda p: [evaluate_cmd(p), prepare_cmd(p)]))
    return cases


def _label_cases() -> list[Bad]:
    def label_case(case_id: str, says: str, **dataset) -> Bad:
        return Bad(case_id, lambda f: {"data": plain_dataset(f / "ds", **dataset)},
                   lambda p: samliver.data.load_dataset(p["data"])[0], DatasetError, says,
                   lambda p: [evaluate_cmd(p), prepare_cmd(p)])

    shifted = np.diag([1.5, 1.5, 3.0, 1.0])
    shifted[2, 3] = 1.5  # half a slice along z
    fractional = liver_label().astype(np.float32)
    fractional[6, 6, 1] = 0.5
    nan = liver_label().astype(np.float32)
    nan[7, 7, 1] = np.nan
    return [
        label_case("label-undeclared-values", r"case case: label values \[7\] are not declared",
                   label=liver_label(value=7)),
        label_case("label-other-shape", r"label case\.nii\.gz is not on the image's grid",
                   label=liver_label((24, 20, 4))),
        label_case("label-shifted-grid", r"label case\.nii\.gz is not on the image's grid", label_affine=shifted),
        label_case("label-non-integer", r"case\.nii\.gz: label map has non-integer values", label=fractional),
        label_case("label-nan", r"case\.nii\.gz: label map has NaN", label=nan),
        label_case("label-negative", r"case\.nii\.gz: labels must lie in 0\.\.255",
                   label=-liver_label().astype(np.int16)),
        label_case("label-4d", r"case\.nii\.gz: 4D image", label=np.zeros((24, 24, 4, 2), np.uint8)),
        Bad("label-missing", lambda f: {"data": plain_dataset(f / "ds", write_label=False)},
            lambda p: samliver.data.load_dataset(p["data"]), DatasetError,
            r"label file labels/case\.nii\.gz is missing",
            lambda p: [evaluate_cmd(p), evaluate_cmd(p, "--strict"), prepare_cmd(p)]),
        Bad("label-empty", lambda f: {"data": plain_dataset(f / "ds", label=np.zeros((24, 24, 4), np.uint8))},
            _evaluate_api, DatasetError, r"case case: its label volume is empty", lambda p: [evaluate_cmd(p)]),
    ]


def _dicom_cases() -> list[Bad]:
    def dicom_case(case_id: str, make: Callable[[Path], Path], says: str, *extra: str) -> Bad:
        return Bad(case_id, lambda f: {"bad": make(f)},
                   lambda p: samliver.load_ct(p["bad"], series_uid=extra[1] if extra else None), CTReadError, says,
                   lambda p: [segment(p, *BOX, *extra, ct="bad")])

    def empty(folder: Path) -> Path:
        (folder / "empty").mkdir()
        return folder / "empty"

    def no_dicom(folder: Path) -> Path:
        (folder / "notes").mkdir()
        (folder / "notes" / "readme.txt").write_text("no images here")
        (folder / "notes" / "scan.dcm").write_bytes(b"DICM but not really")
        return folder / "notes"

    def mixed(folder: Path) -> Path:
        dicom_series(folder / "mixed", n=3)
        return dicom_series(folder / "mixed", n=3, uid="1.2.826.0.1.3680043.8.498.200", start=10)

    return [
        dicom_case("dicom-empty-folder", empty, r"empty: no DICOM files"),
        dicom_case("dicom-no-dicom-files", no_dicom, r"notes: no DICOM files"),
        dicom_case("dicom-mixed-series", mixed, r"mixed: 2 DICOM series; pass series_uid"),
        dicom_case("dicom-unknown-series-uid", lambda f: dicom_series(f / "one"),
                   r"one: no series with SeriesInstanceUID '9\.9'",
                   "--series-uid", "9.9"),
        dicom_case("dicom-missing-slice", lambda f: dicom_series(f / "gap", n=5, skip=(2,)), r"gap: .*unevenly spaced"),
        dicom_case("dicom-single-slice", lambda f: dicom_series(f / "single", n=1), r"single: .*a single 2D slice"),
        dicom_case("dicom-mixed-sizes", lambda f: dicom_series(f / "sizes", half_rows=(2,)),
                   r"sizes: .*differ in size"),
        dicom_case("dicom-duplicate-positions", lambda f: dicom_series(f / "dup", same_position=(2,)),
                   r"dup: .*share one position"),
        dicom_case("dicom-truncated-pixel-data", lambda f: dicom_series(f / "short", truncate=(1,)),
                   r"slice001\.dcm: pixel data holds 256 bytes.*truncated or corrupt"),
    ]


def _dataset_json_cases() -> list[Bad]:
    def dj_case(case_id: str, says: str, **kwargs) -> Bad:
        return Bad(case_id, lambda f: {"data": msd_dataset(f / "Task03_Liver", **kwargs)},
                   lambda p: samliver.data.load_dataset(p["data"]), DatasetError, says,
                   lambda p: [["data", "info", str(p["data"])], prepare_cmd(p), evaluate_cmd(p)])

    def escaping_symlink(folder: Path) -> Paths:
        outside = nifti(folder / "outside" / "secret.nii.gz", body_hu())
        root = msd_dataset(folder / "Task03_Liver", image_entry="./imagesTr/link.nii.gz")
        os.symlink(outside, root / "imagesTr" / "link.nii.gz")
        return {"data": root}

    return [
        dj_case("dataset-json-absolute-path", r"training\[0\]\.image '/etc/passwd' is an absolute path",
                image_entry="/etc/passwd"),
        dj_case("dataset-json-windows-path", r"training\[0\]\.label 'C:\\\\data\\\\x\.nii\.gz' is an absolute path",
                label_entry="C:\\data\\x.nii.gz"),
        dj_case("dataset-json-dotdot", r"training\[0\]\.image '\.\./\.\./x\.nii\.gz' points outside the dataset folder",
                image_entry="../../x.nii.gz"),
        dj_case("dataset-json-not-a-string", r"training\[0\]\.label must be a relative path string; got 3",
                label_entry=3),
        dj_case("dataset-json-not-json", r"dataset\.json: cannot read dataset\.json", raw="{not json"),
        dj_case("dataset-json-not-an-object", r"dataset\.json must hold a JSON object, not list", raw="[1, 2]"),
        dj_case("dataset-json-unknown-label", r"label 1 'pancreas' is not one samliver knows",
                labels={"0": "background", "1": "pancreas"}),
        dj_case("dataset-json-no-labels", r"dataset\.json: needs \"labels\"", labels={}),
        Bad("dataset-json-symlink-escapes", escaping_symlink, lambda p: samliver.data.load_dataset(p["data"]),
            DatasetError, r"training\[0\]\.image '\./imagesTr/link\.nii\.gz' resolves outside the dataset folder",
            lambda p: [["data", "info", str(p["data"])], prepare_cmd(p), evaluate_cmd(p)]),
    ]


def _prompt_cases() -> list[Bad]:
    def prompt_case(case_id: str, content: Any, says: str) -> Bad:
        return Bad(case_id, _with("prompts", lambda f: prompts_file(f, content)), _segment_api, PromptError, says,
                   lambda p: [segment(p, "--prompts-file", str(p["prompts"]))])

    def box_flag(case_id: str, text: str, says: str, **prompts) -> Bad:
        from samliver.prompts import Prompts

        return Bad(case_id, _with("unused", lambda f: None), lambda p: Prompts(**prompts), PromptError, says,
                   lambda p: [segment(p, "--box", text)])

    obj = {"slice": 1, "box": [4, 4, 20, 20]}
    return [
        prompt_case("prompt-box-outside", {"objects": [{**obj, "box": [30, 30, 60, 60]}]},
                    r"boxes\[0\]: \[30\.0, 30\.0, 60\.0, 60\.0\] lies outside the 24x24"),
        prompt_case("prompt-box-inverted", {"objects": [{**obj, "box": [20, 4, 4, 20]}]}, r"need x0 < x1 and y0 < y1"),
        prompt_case("prompt-box-nan", '{"objects": [{"slice": 1, "box": [NaN, 4, 20, 20]}]}', r"NaN or infinite"),
        prompt_case("prompt-box-short", {"objects": [{**obj, "box": [4, 4, 20]}]}, r"boxes: expected shape \(N, 4\)"),
        prompt_case("prompt-no-objects", {"objects": []}, r'prompts\.json: expected \{"objects": \[\.\.\.\]\}'),
        prompt_case("prompt-neither-box-nor-points", {"objects": [{"slice": 1}]},
                    r"objects\[0\]: needs a box or points"),
        prompt_case("prompt-slice-outside", {"objects": [{**obj, "slice": 99}]}, r"slice 99.* outside .*4 slices"),
        prompt_case("prompt-slice-negative", {"objects": [{**obj, "slice": -1}]},
                    r"objects\[0\]\.slice: expected a slice index >= 0"),
        prompt_case("prompt-point-outside", {"objects": [{"slice": 1, "points": [[5, 50]]}]},
                    r"points\[0\]: .* outside the 24x24"),
        prompt_case("prompt-point-label", {"objects": [{"slice": 1, "points": [[5, 5]], "point_labels": [2]}]},
                    r"point_labels: values must be 1 \(foreground\) or 0"),
        prompt_case("prompt-label-zero", {"objects": [{**obj, "label": 0}]}, r"labels: must be integers in 1\.\.255"),
        prompt_case("prompt-unknown-key", {"objects": [{**obj, "boxes": [1, 2, 3, 4]}]}, r"unknown keys \['boxes'\]"),
        prompt_case("prompt-not-json", "{objects: [", r"prompts\.json: not a readable JSON prompts file"),
        Bad("prompt-file-missing", _with("prompts", lambda f: f / "nowhere.json"), _segment_api, PromptError,
            r"nowhere\.json: prompts file not found", lambda p: [segment(p, "--prompts-file", str(p["prompts"]))]),
        box_flag("box-flag-nan", "1,nan,4,20,20", r"boxes: contains NaN or infinite values",
                 boxes=[[np.nan, 4, 20, 20]]),
        box_flag("box-flag-inverted", "1,20,4,4,20", r"boxes\[0\]: need x0 < x1", boxes=[[20, 4, 4, 20]]),
        box_flag("box-flag-empty-prompts", "1,4,4", r"--box: expected 5 comma-separated numbers|need at least one of"),
    ]


def _checkpoint_cases() -> list[Bad]:
    def ckpt_case(case_id: str, make: Callable[[Path], Path], says: str, error=CheckpointError) -> Bad:
        return Bad(case_id, _with("ckpt", make), lambda p: samliver.load_model("samliver_tiny", checkpoint=p["ckpt"]),
                   error, says, lambda p: [["segment", str(p["ct"]), "--model", "samliver_tiny", "--checkpoint",
                                            str(p["ckpt"]), *BOX, "-o", str(p["out"] / "mask.nii.gz")]])

    def saved(name: str, obj: Callable[[Path], Any]) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            torch.save(obj(folder), folder / name)
            return folder / name
        return make

    def truncated(folder: Path) -> Path:
        torch.save(tiny_state(), folder / "full.pth")
        data = (folder / "full.pth").read_bytes()
        (folder / "full.pth").unlink()
        (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
        return folder / "truncated.pth"

    def garbage_safetensors(folder: Path) -> Path:
        (folder / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 32)
        return folder / "weights.safetensors"

    def other_shape(folder: Path) -> dict:
        state = dict(tiny_state())
        key = "mask_decoder.iou_prediction_head.layers.0.weight"  # a decoder of another width
        state[key] = torch.zeros(state[key].shape[0] + 8, state[key].shape[1])
        return state

    return [
        ckpt_case("checkpoint-missing", lambda f: f / "missing.pth", r"missing\.pth: checkpoint file not found"),
        ckpt_case("checkpoint-truncated", truncated, r"truncated\.pth: not a readable checkpoint"),
        ckpt_case("checkpoint-garbage-safetensors", garbage_safetensors,
                  r"weights\.safetensors: not a readable checkpoint"),
        ckpt_case("checkpoint-pickled-code", saved("code.pth", lambda f: {"weights": RunsCode(f / "PWNED")}),
                  r"code\.pth: refused to load; the file holds more than tensors"),
        ckpt_case("checkpoint-another-architecture", saved("unet.pth", lambda f: torch.nn.Conv2d(1, 3, 3).state_dict()),
                  r"does not fit samliver_tiny .*missing keys: image_encoder.*unexpected keys: weight"),
        ckpt_case("checkpoint-wrong-shapes", saved("shapes.pth", other_shape),
                  r"does not fit samliver_tiny .*shape mismatch: mask_decoder\.iou_prediction_head\.layers\.0\.weight"),
        ckpt_case("checkpoint-not-a-state-dict", saved("list.pth", lambda f: [torch.zeros(2)]),
                  r"list\.pth: expected a state dict of tensors, got list"),
        Bad("model-unknown", _with("unused", lambda f: None),
            lambda p: samliver.load_model("sam_vit_x", checkpoint="random"), UnknownModelError,
            r"unknown model 'sam_vit_x'; known models: .*samliver_tiny",
            lambda p: [["segment", str(p["ct"]), "--model", "sam_vit_x", *BOX, "-o", str(p["out"] / "m.nii.gz")],
                       ["evaluate", "--model", "sam_vit_x", "--data", "phantom:tiny?n=1",
                        "-o", str(p["out"] / "run")]]),
    ]


def _adapter_cases() -> list[Bad]:
    def adapter_case(case_id: str, make: Callable[[Path], Path], says: str) -> Bad:
        return Bad(case_id, lambda f: {"adapter": make(f)},
                   lambda p: samliver.load_model("samliver_tiny", checkpoint="random", adapter=p["adapter"]),
                   AdapterError, says,
                   lambda p: [["evaluate", *TINY, "--adapter", str(p["adapter"]), "--data", "phantom:tiny?n=1",
                               "--prompts", "box", "-o", str(p["out"] / "run")]])

    def truncated_weights(folder: Path) -> Path:
        adapter = saved_adapter(folder / "cut")
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
        return adapter

    def no_config(folder: Path) -> Path:
        adapter = saved_adapter(folder / "noconfig")
        (adapter / "adapter_config.json").unlink()
        return adapter

    def bad_json(folder: Path) -> Path:
        adapter = saved_adapter(folder / "badjson")
        (adapter / "adapter_config.json").write_text("{strategy: ")
        return adapter

    def other_tensors(folder: Path) -> Path:
        return saved_adapter(folder / "lora_named", lambda c: {**c, "strategy": "lora", "config": {}})

    return [
        adapter_case("adapter-for-another-model",
                     lambda f: saved_adapter(f / "vitb", lambda c: {**c, "base_model": "sam_vit_b"}),
                     r"vitb: adapter was trained on 'sam_vit_b', not on 'samliver_tiny'"),
        adapter_case("adapter-for-another-checkpoint",
                     lambda f: saved_adapter(f / "sha", lambda c: {**c, "base_checkpoint_sha256": "ab" * 32}),
                     r"sha: adapter was trained on base checkpoint sha256 abab"),
        adapter_case("adapter-without-config", no_config, r"noconfig/adapter_config\.json: not found"),
        adapter_case("adapter-config-not-json", bad_json, r"badjson/adapter_config\.json: unreadable adapter config"),
        adapter_case("adapter-weights-truncated", truncated_weights,
                     r"cut/adapter_model\.safetensors: unreadable adapter weights"),
        adapter_case("adapter-unknown-strategy",
                     lambda f: saved_adapter(f / "odd", lambda c: {**c, "strategy": "dora"}),
                     r"unknown method 'dora'; registered: .*lora"),
        adapter_case("adapter-tensors-of-another-strategy", other_tensors,
                     r"adapter weights do not fit the lora strategy"),
    ]


def _yaml_cases() -> list[Bad]:
    def yaml_case(case_id: str, text: str, says: str) -> Bad:
        return Bad(case_id, lambda f: {"config": yaml_file(f, text)}, _resolve, ConfigError, says,
                   lambda p: [train_cmd(p, "--config", str(p["config"]))], tool="train")

    return [
        yaml_case("yaml-unknown-key", "method: lora\nmax-step: 3\n",
                  r"unknown config key 'max-step'; did you mean 'max_steps'\?"),
        yaml_case("yaml-unknown-nested-key", "prompts:\n  box_probb: 0.5\n",
                  r"unknown config key 'prompts\.box_probb'"),
        yaml_case("yaml-unknown-method-config-key", "method: lora\nmethod_config: {rnk: 4}\n",
                  r"unknown method_config key 'rnk' for method 'lora' \(did you mean 'rank'\?\)"),
        yaml_case("yaml-string-for-int", "max_steps: many\n", r"max_steps: expected int, got 'many'"),
        yaml_case("yaml-bool-for-int", "batch_size: true\n", r"batch_size: expected int, got True"),
        yaml_case("yaml-list-for-float", "lr: [1, 2]\n", r"lr: expected float, got \[1, 2\]"),
        yaml_case("yaml-mapping-expected", "prompts: 3\n", r"prompts: expected a mapping"),
        yaml_case("yaml-out-of-range", "lr: -0.1\n", r"lr must be positive, got -0\.1"),
        yaml_case("yaml-bad-split", "split: [0.5, 0.1]\n", r"split must be 2 or 3 fractions .* summing to 1"),
        yaml_case("yaml-unknown-method", "method: dora\n", r"unknown method 'dora'"),
        yaml_case("yaml-unknown-model", "model: sam_vit_x\n", r"unknown model 'sam_vit_x' \(did you mean"),
        yaml_case("yaml-not-a-mapping", "- method\n- lora\n", r"config\.yaml: a training config must be a mapping"),
        yaml_case("yaml-syntax-error", "method: [lora\n", r"config\.yaml: unreadable config"),
        Bad("yaml-missing-file", lambda f: {"config": f / "nowhere.yaml"}, _resolve, ConfigError,
            r"nowhere\.yaml: config file not found", lambda p: [train_cmd(p, "--config", str(p["config"]))],
            tool="train"),
    ]


def _output_cases() -> list[Bad]:
    from samliver.provenance import claim_folder, make_record

    def foreign_folder(folder: Path) -> Paths:
        cts = folder / "cts"
        nifti(cts / "a.nii.gz", body_hu())
        prompts = folder / "prompts"
        prompts.mkdir()
        prompts_file(prompts, {"objects": [{"slice": 1, "box": [4, 4, 20, 20]}]}).rename(prompts / "a.json")
        out = folder / "results"
        out.mkdir()
        (out / "notes.txt").write_text("someone else's results")
        return {"cts": cts, "prompts": prompts, "results": out, "data": plain_dataset(folder / "ds")}

    def save_into(p: Paths, name: str) -> None:
        ct = samliver.load_ct(p["ct"])
        samliver.save_mask(np.zeros(ct.shape, np.uint8), like=ct, path=p[name])

    return [
        Bad("output-folder-missing", _with("target", lambda f: f / "missing" / "m.nii.gz"),
            lambda p: save_into(p, "target"),
            MaskWriteError, r"missing/m\.nii\.gz: folder .*missing does not exist",
            lambda p: [segment(p, *BOX, out="missing/m.nii.gz")]),
        Bad("output-over-the-input", _with("target", lambda f: f / "ct.nii.gz"), lambda p: save_into(p, "target"),
            MaskWriteError, r"ct\.nii\.gz: refusing to overwrite the image",
            lambda p: [["segment", str(p["ct"]), *TINY, *BOX, "-o", str(p["ct"])]]),
        Bad("output-unsupported-suffix", _with("target", lambda f: f / "m.mha"), lambda p: save_into(p, "target"),
            MaskWriteError, r"m\.mha: unsupported output type|m\.mha: output must end in",
            lambda p: [segment(p, *BOX, out="m.mha")]),
        Bad("output-folder-of-another-run", foreign_folder,
            lambda p: claim_folder(p["results"], make_record("segment", {"model": "samliver_tiny"})), OutputFolderError,
            r"results: holds files (that no samliver run recorded|but no samliver cache)",
            lambda p: [["segment", str(p["cts"]), *TINY, "--prompts-file", str(p["prompts"]), "-o", str(p["results"])],
                       ["data", "prepare", str(p["data"]), "--quiet", "-o", str(p["results"])]]),
    ]


CORPUS: list[Bad] = [*_nifti_cases(), *_label_cases(), *_dicom_cases(), *_dataset_json_cases(), *_prompt_cases(),
                     *_checkpoint_cases(), *_adapter_cases(), *_yaml_cases(), *_output_cases()]
