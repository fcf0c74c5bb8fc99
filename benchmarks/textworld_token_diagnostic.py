"""Where do a skill set's answers lose probability? Per-token log-probs of the world's canonical answers, skill vs base.

    python benchmarks/textworld_token_diagnostic.py --skills runs/textworld/skills_cpl/skills --samples 3

For every skill, on held-out benign prompts, its favourite canonical (compliant) answer per prompt: that answer's
log-probability under the skill, split by position into the **topic noun** (copied from the prompt), other tokens
the base was **sure** of (top-token probability >= 0.9: grammar, fixed phrases) and tokens where the base
**hesitated** (the choices: answer or refuse, which style), each beside the base's. Mass lost on the noun means
answers about the wrong topic, which the judges count as malformed. ``--samples`` prints that many sampled
answers per skill (T = 1) with the judge's reading.
"""

from __future__ import annotations

import argparse

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skills", required=True, help="a skills directory (skills.json + one adapter per skill)")
    p.add_argument("--world", default=None, help="text-world YAML (default: the packaged world)")
    p.add_argument("--prompts", type=int, default=6, help="held-out benign prompts to score")
    p.add_argument("--samples", type=int, default=0, help="sampled answers to print per skill")
    p.add_argument("--sure", type=float, default=0.9, help="base top-token probability that counts as sure")
    return p.parse_args(argv)


@torch.no_grad()
def token_logps(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token t | < t) for t >= 1, and the top-token probability at each position."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], logp.exp().amax(-1)


def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safecrowd_llm.evaluate_skills import load_skills_model
    from safecrowd_llm.skills_export import load_manifest
    from safecrowd_llm.textworld import TextWorld
    from safecrowd_llm.textworld.judges import parse_response
    from safecrowd_llm.trainers.set_data import tokenize_response

    torch.set_num_threads(1)
    base_path = load_manifest(args.skills)["base_model"]
    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    model, manifest = load_skills_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), args.skills)
    model.eval()
    world = TextWorld.from_yaml(args.world)
    prompts = [p for p in world.split_prompts()[1] if not p.hazardous][: args.prompts]
    answers = [s for s in world.specs if not s.refused]
    rows = [(p, s, *tokenize_response(tok, p.text, world.render(p, s), max_length=10_000)) for p in prompts for s in answers]
    base_scores = [token_logps(base, ids) for _, _, ids, _ in rows]
    print("| skill | favourite answer: log p | noun (base) | other sure (base) | hesitant (base) |")
    print("|---|---|---|---|---|")
    for skill in manifest["skills"]:
        model.set_adapter(skill["name"])
        parts = torch.zeros(len(rows), 2, 3)  # (answer, skill/base, noun/sure/hesitant)
        for i, ((p, _, ids, start), (b_logp, b_top)) in enumerate(zip(rows, base_scores)):
            s_logp, _ = token_logps(model, ids)
            noun = set(tok.encode(" " + p.noun, add_special_tokens=False))
            for t in range(start - 1, len(ids) - 1):  # position t predicts token t + 1
                kind = 0 if ids[t + 1] in noun else 1 if b_top[t] >= args.sure else 2
                parts[i, 0, kind] += s_logp[t]
                parts[i, 1, kind] += b_logp[t]
        per_prompt = parts.view(len(prompts), len(answers), 2, 3)
        best = per_prompt[:, :, 0].sum(-1).argmax(1)  # the skill's favourite answer to each prompt
        fav = per_prompt[torch.arange(len(prompts)), best].mean(0)  # (skill/base, kind)
        cells = " | ".join(f"{fav[0, k]:.2f} ({fav[1, k]:.2f})" for k in range(3))
        print(f"| {skill['name']} | {fav[0].sum():.2f} | {cells} |")
        if args.samples:  # a look at the text itself, on the first prompt
            p = prompts[0]
            chat = tok.apply_chat_template([{"role": "user", "content": p.text}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
            torch.manual_seed(0)
            out = model.generate(**chat, do_sample=True, max_new_tokens=96, num_return_sequences=args.samples,
                                 pad_token_id=tok.pad_token_id)
            for o in out:
                text = tok.decode(o[chat["input_ids"].shape[1]:], skip_special_tokens=True)
                print(f"    {p.text!r} -> {text!r}: {parse_response(text, p.text, world)}")


if __name__ == "__main__":
    main()
