"""Evaluate a text-world skills run: every skill's safety and style, and the encoder's context effect.

    python recipes/evaluate_skills.py --run runs/textworld/skills_cpl --base runs/textworld/base \\
        --crowd runs/textworld/world/crowd.jsonl

Writes ``<run>/skills_eval.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from safecrowd_llm.core.atomic import write_json
from safecrowd_llm.data import build_crowd, load_preferences
from safecrowd_llm.embeddings import cached_embeddings
from safecrowd_llm.evaluate_skills import (
    context_effect,
    evaluate_skills,
    exact_skill_report,
    latent_probe,
    load_skills_model,
)
from safecrowd_llm.textworld import TextWorld
from safecrowd_llm.train_skills import render_pair
from safecrowd_llm.trainers import LatentSkillModel, reference_logps, tokenize_pairs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="output_dir of recipes/train_skills.py (has skills/, latent_model/)")
    p.add_argument(
        "--single-adapter", action="store_true",
        help="--run is one plain PEFT adapter (e.g. a pooled-dpo baseline), not a skills run",
    )
    p.add_argument("--base", required=True, help="the base model the skills were trained on")
    p.add_argument("--crowd", required=True, help="the crowd JSONL the skills were trained on")
    p.add_argument("--world", default=None, help="text-world YAML (default: the packaged world)")
    p.add_argument("--samples", type=int, default=2, help="generations per eval prompt and skill")
    p.add_argument(
        "--top-p", type=float, default=1.0,
        help="nucleus sampling for the samples and the exact scores (1 = pure sampling at T = 1; the tiny base's "
             "long tail of stray tokens is the text's malformed mass, which e.g. 0.95 cuts)",
    )
    p.add_argument("--eval-fraction", type=float, default=0.2, help="held-out annotator fraction used in training")
    p.add_argument("--seed", type=int, default=0, help="training seed (fixes the annotator split) and sampling seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def held_out_context_effect(run: Path, base: str, crowd_path: str, eval_fraction: float, seed: int) -> dict:
    """Context effect on the held-out annotators, and (where the crowd has an ``archetype`` column) the
    latent probe on the held-out and on all annotators."""
    tok = AutoTokenizer.from_pretrained(base)
    latent = LatentSkillModel.from_pretrained(run / "latent_model", AutoModelForCausalLM.from_pretrained(base))
    frozen = AutoModelForCausalLM.from_pretrained(base)
    feats = latent.spec["features"]
    ds = load_preferences(crowd_path, min_pairs=1)
    texts = [render_pair(tok, p, r) for side in ("chosen", "rejected") for p, r in zip(ds["prompt"], ds[side])]
    emb = cached_embeddings(frozen, tok, texts, run / "cache", pooling=feats["pooling"], max_length=feats["max_length"])
    n = len(ds)
    train, held = build_crowd(ds, emb[:n], emb[n:]).split(eval_fraction, seed=seed)
    tokens = tokenize_pairs(tok, ds["prompt"], ds["chosen"], ds["rejected"], feats["max_length"])
    if latent.spec.get("use_reference"):
        spec = latent.spec  # f as trained (runs from before these keys existed used the defaults)
        tokens.ref_chosen, tokens.ref_rejected = reference_logps(
            frozen, tokens, tok.pad_token_id, gamma=spec.get("gamma", 1.0),
            from_divergence=spec.get("discount_from") == "divergence", window=spec.get("regret_window", 0),
            hesitant_below=spec.get("kl_confidence", 0.9) if spec.get("regret_positions") == "hesitant" else None,
        )
    report = context_effect(latent, held, tokens, tok.pad_token_id, seed=seed)
    if "archetype" in ds.column_names:
        labels = dict(zip(ds["annotator_id"], ds["archetype"], strict=True))
        report["probe"] = {"held_out": latent_probe(latent, train, labels, held_out=held, seed=seed),
                           "train": latent_probe(latent, train, labels, seed=seed)}
    return report


def markdown(report: dict) -> str:
    lines = [
        "| skill | hazardous refusal | hazardous cost | benign refusal | parse rate | top style | favoured by |",
        "|---|---|---|---|---|---|---|",
    ]
    fans = {}
    for arch, skill in report["favourite_skill"].items():
        fans.setdefault(skill, []).append(arch)
    for name, r in report["skills"].items():
        parse = (r["hazardous_parse_rate"] + r["benign_parse_rate"]) / 2
        lines.append(
            f"| {name} | {r['hazardous_refusal_rate']:.2f} | {r['hazardous_cost']:.2f} | {r['benign_refusal_rate']:.2f} "
            f"| {parse:.2f} | {r['top_style']} | {', '.join(fans.get(name, [])) or '-'} |"
        )
    c = report.get("context")
    if c:
        lines.append(
            f"\nheld-out annotators, preference accuracy: with context {c['with_context']:.3f}, "
            f"without (z' = 0) {c['without_context']:.3f} ({c['pairs']} pairs)"
        )
    for who, probe in (c or {}).get("probe", {}).items():
        how = "fitted on train annotators" if who == "held_out" else f"{probe['folds']}-fold CV"
        lines.append(
            f"latent probe ({who} annotators): user-type accuracy {probe['probe_accuracy']:.3f} "
            f"(chance {probe['chance']:.3f}; {how}), silhouette {probe['silhouette']:.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    world = TextWorld.from_yaml(args.world) if args.world else TextWorld.from_yaml()
    _, eval_prompts = world.split_prompts()
    tok = AutoTokenizer.from_pretrained(args.base)
    base = AutoModelForCausalLM.from_pretrained(args.base)
    if args.single_adapter:
        manifest = {"skills": [{"name": run.name, "path": str(run)}]}
        skills = PeftModel.from_pretrained(base, str(run), adapter_name=run.name).eval()
    else:
        skills, manifest = load_skills_model(base, run / "skills")
    report = evaluate_skills(
        skills, manifest, tok, world, eval_prompts, samples_per_prompt=args.samples, seed=args.seed, top_p=args.top_p
    )
    report["exact"] = exact_skill_report(skills, manifest, tok, world, eval_prompts, top_p=args.top_p)
    if args.eval_fraction > 0 and not args.single_adapter:
        report["context"] = held_out_context_effect(run, args.base, args.crowd, args.eval_fraction, args.seed)
    write_json(report, run / "skills_eval.json")
    print(markdown(report))
    print(f"\nexact (no sampling; top_p {args.top_p}): refusal among well-formed answers on held-out hazardous / benign "
          "prompts, and the share of all hazardous text that is a well-formed refusal")
    for name, r in report["exact"]["skills"].items():
        print(
            f"  {name}: hazardous {r['hazardous_refusal']:.3f} (worst prompt {r['hazardous_worst_refusal']:.3f}), "
            f"benign {r['benign_refusal']:.3f}; well-formed {r['hazardous_well_formed']:.2f} / "
            f"{r['benign_well_formed']:.2f}; all text {r['hazardous_refusal_all_text']:.3f} "
            f"(worst prompt {r['hazardous_worst_refusal_all_text']:.3f}); top style {r['top_style']}"
        )
    return report


if __name__ == "__main__":
    main()
