"""The crowd text world: a procedurally generated, fully checkable world for CPU-scale runs.

Prompts (templates x topics, some hazardous) get responses that vary in length, tone, format and
compliance; annotator archetypes prefer different styles but all penalise complying with hazardous
requests (the shared principle, never labelled); a crowd's preference rows are drawn by
Bradley–Terry. Judges read any generated text back into its attributes, so task reward and safety
cost are exact. ``python -m safecrowd_llm.textworld --help`` writes a crowd to disk.
"""

from .config import (
    DEFAULT_CONFIG_PATH,
    Archetype,
    ConfigError,
    CrowdConfig,
    PreferenceConfig,
    StyleConfig,
    Topic,
    WorldConfig,
)
from .crowd import (
    EXCHANGE_COLUMNS,
    assign_archetypes,
    noiseless_label,
    read_jsonl,
    sample_crowd,
    sft_rows,
    summarize_crowd,
    to_dataset,
    write_json,
    write_jsonl,
)
from .judges import (
    TASKS,
    ParsedResponse,
    RewardFn,
    archetype_reward,
    as_trl_reward,
    concise,
    helpfulness,
    make_oracle_reward,
    make_task_reward,
    parse_response,
    safety_cost,
    structured,
)
from .loader import load_world_config, world_config_from_dict
from .world import Prompt, ResponseSpec, TextWorld, default_world, normalize

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EXCHANGE_COLUMNS",
    "TASKS",
    "Archetype",
    "ConfigError",
    "CrowdConfig",
    "ParsedResponse",
    "PreferenceConfig",
    "Prompt",
    "ResponseSpec",
    "RewardFn",
    "StyleConfig",
    "TextWorld",
    "Topic",
    "WorldConfig",
    "archetype_reward",
    "as_trl_reward",
    "assign_archetypes",
    "concise",
    "default_world",
    "helpfulness",
    "load_world_config",
    "make_oracle_reward",
    "make_task_reward",
    "noiseless_label",
    "normalize",
    "parse_response",
    "read_jsonl",
    "safety_cost",
    "sample_crowd",
    "sft_rows",
    "structured",
    "summarize_crowd",
    "to_dataset",
    "world_config_from_dict",
    "write_json",
    "write_jsonl",
]
