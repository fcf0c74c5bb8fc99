"""The no-latent pooled baselines train through TRL from the same recipe arguments and save an adapter."""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from peft import PeftConfig

from safecrowd_llm.pooled import PooledDPOConfig, PooledRewardConfig, train_pooled
from safecrowd_llm.train_skills import SkillDataArguments


@pytest.mark.parametrize(("method", "config_cls", "task"), [
    ("pooled-dpo", PooledDPOConfig, "CAUSAL_LM"),
    ("pooled-reward", PooledRewardConfig, "SEQ_CLS"),
])
def test_pooled_baseline_trains_and_saves_an_adapter(base_and_crowd, tmp_path, method, config_cls, task):
    data = SkillDataArguments(method=method, base_model=str(base_and_crowd / "base"),
                              dataset=str(base_and_crowd / "crowd.jsonl"), cpu_threads=1)
    args = config_cls(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=True, lora_r=4, max_length=96, disable_tqdm=True)
    out = train_pooled(data, args)
    assert PeftConfig.from_pretrained(str(out)).task_type == task
    assert (out / "adapter_model.safetensors").exists()


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        SkillDataArguments(method="pooled-magic")

