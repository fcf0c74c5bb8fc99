"""Fixtures shared by the language-model tests: a tiny base model and a small crowd on disk."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_and_crowd(tmp_path_factory):
    """A saved tiny (untrained) base model + tokenizer, and a 6-annotator text-world crowd JSONL."""
    pytest.importorskip("transformers", reason="needs the llm extra: pip install -e '.[llm]'")
    from safecrowd_llm.textworld import TextWorld, sample_crowd, write_jsonl
    from safecrowd_llm.tiny_base import build_tiny_model, train_tokenizer, world_texts

    root = tmp_path_factory.mktemp("pooled")
    world = TextWorld.from_yaml(**{"crowd.num_annotators": 6, "crowd.pairs_per_annotator": 8})
    write_jsonl(sample_crowd(world, seed=0), root / "crowd.jsonl")
    tok = train_tokenizer(world_texts(world))
    build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root
