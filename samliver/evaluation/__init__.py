"""Evaluation: segmentation metrics (:mod:`.metrics`), lesions and their sizes (:mod:`.lesion_sizes`),
lesion-wise detection metrics (:mod:`.lesions`) and clinical measurements (:mod:`.clinical`)."""

from . import clinical, lesion_sizes, lesions, metrics

__all__ = ["clinical", "lesion_sizes", "lesions", "metrics"]

# The evaluation run (cases × targets × prompt settings), its settings registry and outputs.
from .outputs import RunFolderError, compare_runs, format_compare  # noqa: E402
from .runner import EvaluationResult, evaluate  # noqa: E402
from .settings import (  # noqa: E402
    PromptSetting, SettingError, get_setting, list_settings, parse_settings, register_setting,
)

__all__ += ["EvaluationResult", "PromptSetting", "RunFolderError", "SettingError", "compare_runs", "evaluate",
            "format_compare", "get_setting", "list_settings", "parse_settings", "register_setting"]

# Settings that register on import: RECIST marks and automatic segmentation.
from . import generator_settings  # noqa: E402,F401
from . import text_setting  # noqa: E402,F401  (the `text` setting: CLIP text prompts)
