"""Datasets, CT preprocessing, synthetic phantoms and tumour synthesis.

Labels follow LiTS/MSD: 0 background, 1 liver, 2 tumour.
"""

from .augment import DEFAULTS as AUGMENT_DEFAULTS
from .augment import SliceAugment, build_augment
from .cache import CacheError, CacheIndex, CacheSettings, CaseCache, open_cache, prepare_cache
from .case import BACKGROUND, LIVER, TUMOR, Case
from .datasets import LABEL_CLASSES, Dataset, label_table, load_dataset
from .layouts import detect_layout
from .intensity import WINDOWS, model_pixels, window_for
from .phantom import PHANTOM_VERSION, list_phantom_presets, load_phantom_preset, make_phantom
from .sampling import TumorOversampler
from .slices import SliceDataset, collate_slices, objects_from_label
from .splits import SPLIT_KEYS, apply_split, check_split, load_split, save_split, split_cases
from .tumor_synthesis import (
    DEFAULT_OPTIONS as TUMOR_SYNTHESIS_DEFAULTS,
    SynthesizedTumor,
    TumorSynthesisAugment,
    TumorSynthesisResult,
    insert_tumors,
    synthesize_tumors,
    synthesize_tumors_files,
)

__all__ = [
    "AUGMENT_DEFAULTS", "CacheError", "CacheIndex", "CacheSettings", "CaseCache", "SliceAugment", "SliceDataset",
    "TumorOversampler", "WINDOWS", "build_augment", "collate_slices", "model_pixels", "objects_from_label",
    "open_cache", "prepare_cache", "window_for",
    "BACKGROUND", "LIVER", "TUMOR", "Case", "Dataset", "LABEL_CLASSES", "SPLIT_KEYS",
    "SynthesizedTumor", "TUMOR_SYNTHESIS_DEFAULTS", "TumorSynthesisAugment", "TumorSynthesisResult",
    "apply_split", "check_split", "detect_layout", "insert_tumors", "label_table", "load_dataset",
    "list_phantom_presets", "load_phantom_preset", "load_split", "make_phantom", "PHANTOM_VERSION",
    "save_split", "split_cases", "synthesize_tumors", "synthesize_tumors_files",
]
