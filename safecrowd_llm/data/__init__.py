"""Per-annotator preference data for the language-model track.

The exchange format is TRL's preference format plus ``annotator_id`` (see :mod:`.preferences`);
:mod:`.grouping` gives per-annotator views and the bridge to the core's ``Crowd``; :mod:`.builders`
converts PRISM, UltraFeedback and PKU-SafeRLHF; ``python -m safecrowd_llm.data build ...`` writes them.
"""

from .builders import BUILDERS, build_pku_saferlhf, build_prism, build_ultrafeedback
from .grouping import (
    build_crowd,
    filter_min_pairs,
    group_by_annotator,
    sample_context_target,
    split_annotators,
    summarize,
)
from .preferences import REQUIRED_COLUMNS, is_conversational, load_preferences, to_text, validate_record
from .records import DataError, iter_records, write_jsonl

__all__ = [
    "BUILDERS",
    "REQUIRED_COLUMNS",
    "DataError",
    "build_crowd",
    "build_pku_saferlhf",
    "build_prism",
    "build_ultrafeedback",
    "filter_min_pairs",
    "group_by_annotator",
    "is_conversational",
    "iter_records",
    "load_preferences",
    "sample_context_target",
    "split_annotators",
    "summarize",
    "to_text",
    "validate_record",
    "write_jsonl",
]
