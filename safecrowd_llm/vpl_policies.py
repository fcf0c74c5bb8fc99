"""Safe-VPL's skills as policies: one LoRA per exported skill latent z_k, fine-tuned on r_phi(x, y, z_k).

Safe-VPL learns a latent-conditioned reward r_phi(x, y, z'); the skills it exports are latents of that reward,
not policies. The paper turns each latent into a low-level skill pi_l(y | x, z_k) by RL on r_phi(., ., z_k);
here the RL step is best-of-n fine-tuning (:mod:`.best_of_n`), which needs no critic. The output is an ordinary
skills directory (``skill_<k>/`` PEFT adapters + ``skills.json`` with the same latents, prior log-densities and
annotators) that the router, the evaluation and the server read exactly like Safe-CPL's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig

from .baselines import load_prompts
from .best_of_n import train_best_of_n
from .core.atomic import write_json
from .evaluate_methods import heldout_report
from .latent_reward import LatentReward
from .rewards import load_reward
from .skills_export import SKILLS_MANIFEST, config_hash
from .textworld import TextWorld
from .trainers.cpu_defaults import CPUFriendlyDefaults

__all__ = ["SkillPolicyConfig", "train_skill_policies"]


@dataclass
class SkillPolicyConfig(CPUFriendlyDefaults, SFTConfig):
    """TRL ``SFTConfig`` (each best-of-n round's fine-tuning) + which Safe-VPL run, prompts and search."""

    vpl_model: str = field(default="", metadata={"help": "output_dir of train_skills.py --method safe-vpl (latent_model/ + skills/)."})
    base_model: str = field(default="", metadata={"help": "Base causal LM the policies adapt; default: the Safe-VPL run's base."})
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    skills: list[str] = field(default_factory=list, metadata={"help": "Skill names to train (default: every skill)."})
    prompts: str = field(default="textworld", metadata={"help": "Training prompts: 'textworld' or a dataset with a 'prompt' column."})
    prompts_split: str = field(default="train", metadata={"help": "Split to read when prompts name a dataset."})
    world_config: str | None = field(default=None, metadata={"help": "Text-world YAML; unset = the packaged world."})
    bon_rounds: int = field(default=3, metadata={"help": "Rounds of sample -> score with r_phi(z_k) -> SFT on the best."})
    bon_samples: int = field(default=8, metadata={"help": "Completions sampled per prompt per round."})
    bon_epochs: float = field(default=8.0, metadata={"help": "SFT epochs over a round's best completions."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rounds."})
    max_completion_length: int = field(default=64, metadata={"help": "Tokens generated per completion."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of each skill policy."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt."})
    eval_task_reward: str = field(
        default="safecrowd_llm.textworld.judges.helpfulness",
        metadata={"help": "Text world: the task reward reported with each skill's held-out safety (not trained on)."},
    )
    eval_samples_per_prompt: int = field(default=4, metadata={"help": "Text world: held-out completions per prompt scored per skill; 0 = skip."})
    cpu_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})

    def __post_init__(self) -> None:
        if not self.vpl_model:
            raise ValueError("set vpl_model: the output_dir of train_skills.py --method safe-vpl")
        if self.bon_rounds < 1 or self.bon_samples < 2:
            raise ValueError(f"need bon_rounds >= 1 and bon_samples >= 2, got {self.bon_rounds}, {self.bon_samples}")
        super().__post_init__()


def train_skill_policies(args: SkillPolicyConfig) -> dict[str, Any]:
    """Train one best-of-n LoRA policy per Safe-VPL skill and write a skills directory to ``args.output_dir``.

    A skill whose adapter is already there is skipped; inside a skill, best-of-n resumes after its last
    finished round (kept under ``output_dir/.rounds/``). Returns the written ``skills.json``.
    """
    run = Path(args.vpl_model)
    source = json.loads((run / "skills" / SKILLS_MANIFEST).read_text()) if (run / "skills" / SKILLS_MANIFEST).exists() else None
    if source is None or source.get("method") != "safe-vpl":
        raise ValueError(f"{run / 'skills' / SKILLS_MANIFEST} is not a Safe-VPL skills manifest (train_skills.py --method safe-vpl)")
    wanted = args.skills or [s["name"] for s in source["skills"]]
    unknown = sorted(set(wanted) - {s["name"] for s in source["skills"]})
    if unknown:
        raise ValueError(f"skills {unknown} are not in {run / 'skills' / SKILLS_MANIFEST}")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    base = args.base_model or source["base_model"]
    reward = LatentReward.from_run(run, base, args.dtype, args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    world = TextWorld.from_yaml(args.world_config)
    prompts = load_prompts(args, world)
    targets = "all-linear" if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    skills = []
    for skill in (s for s in source["skills"] if s["name"] in wanted):
        name, target = skill["name"], out / skill["name"]
        report_file = out / ".rounds" / name / "report.json"
        if not (target / "adapter_model.safetensors").exists():
            set_seed(args.seed)
            reward.z = torch.tensor(skill["latent"], dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, args.dtype),
                                                         trust_remote_code=args.trust_remote_code)
            policy, curve, _ = train_best_of_n(args, model, tokenizer, reward, prompts, lora, work_dir=out / ".rounds" / name)
            report: dict[str, Any] = {"curve": curve}
            if args.eval_samples_per_prompt > 0 and args.prompts == "textworld":
                report["heldout"] = heldout_report(policy, tokenizer, world, load_reward(args.eval_task_reward),
                                                   args.eval_samples_per_prompt, temperature=args.temperature,
                                                   max_new_tokens=args.max_completion_length, seed=args.seed)
            write_json(report, report_file)
            tmp = out / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            policy.save_pretrained(str(tmp), safe_serialization=True)
            tmp.replace(target)
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        skills.append({**skill, "path": name, "policy": report})
    manifest = {
        **{k: v for k, v in source.items() if k != "skills"},
        "base_model": base,
        "skill_policy": {"optimizer": "best-of-n", "reward": "safe-vpl r_phi(x, y, z_k)", "source": str(run / "skills")},
        "config_hash": config_hash(args),
        "skills": skills,
    }
    write_json(manifest, out / SKILLS_MANIFEST)
    return manifest
