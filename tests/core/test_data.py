import pytest
import torch

from safecrowd_llm.core import (
    Comparison,
    Crowd,
    PreferenceSet,
    collate_sets,
    iterate_set_batches,
    split_context_target,
)


def make_set(aid: str, n: int, feat=(3,)) -> PreferenceSet:
    g = torch.Generator().manual_seed(hash(aid) % 1000)
    return PreferenceSet(aid, torch.randn(n, *feat, generator=g), torch.randn(n, *feat, generator=g), torch.ones(n))


def test_validation_errors_name_annotator_and_index():
    with pytest.raises(ValueError, match=r"'alice'.*empty"):
        PreferenceSet("alice", torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match=r"'bob'.*comparison 1.*label"):
        PreferenceSet("bob", torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 2.0]))
    b = torch.zeros(4, 3)
    b[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"'carol'.*comparison 3.*side b.*NaN"):
        PreferenceSet("carol", torch.zeros(4, 3), b, torch.zeros(4))
    with pytest.raises(ValueError, match=r"'dan'.*different shapes"):
        PreferenceSet("dan", torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"'erin'.*3 comparisons but there are 2 labels"):
        PreferenceSet("erin", torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(2))
    comps = [Comparison(torch.zeros(3), torch.zeros(3), 1.0), Comparison(torch.zeros(4), torch.zeros(4), 0.0)]
    with pytest.raises(ValueError, match=r"'fay'.*comparison 1"):
        PreferenceSet.from_comparisons("fay", comps)


def test_crowd_rejects_mixed_shapes_and_duplicates():
    with pytest.raises(ValueError, match=r"'b'.*feature shape"):
        Crowd.from_sets([make_set("a", 2), make_set("b", 2, feat=(4,))])
    with pytest.raises(ValueError, match="twice"):
        Crowd.from_sets([make_set("a", 2), make_set("a", 3)])


def test_from_comparisons_keeps_labels_weights_and_ids():
    comps = [Comparison(torch.ones(2), torch.zeros(2), 1.0, weight=2.0, id=7), Comparison(torch.zeros(2), torch.ones(2), 0.5)]
    s = PreferenceSet.from_comparisons("a", comps)
    assert s.y.tolist() == [1.0, 0.5] and s.weights.tolist() == [2.0, 1.0] and s.ids.tolist() == [7, 1]


def test_split_annotators_is_disjoint_and_seeded():
    crowd = Crowd.from_sets([make_set(f"u{i}", 3) for i in range(10)])
    train, held = crowd.split(0.3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert not set(train.annotator_ids) & set(held.annotator_ids)
    assert crowd.split(0.3, seed=1)[1].annotator_ids == held.annotator_ids


def test_context_target_split():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ctx, tgt = split_context_target(10, (2, 8), g)
        assert 2 <= len(ctx) <= 8 and len(ctx) + len(tgt) == 10
        assert not set(ctx.tolist()) & set(tgt.tolist())
    ctx, tgt = split_context_target(5, 3, g, disjoint=False)
    assert len(ctx) == 3 and sorted(tgt.tolist()) == list(range(5))
    ctx, tgt = split_context_target(1, 4, g)  # a single comparison is both context and target
    assert len(ctx) == 1 and len(tgt) == 1


def test_collate_pads_and_keeps_each_set_together():
    sets = [make_set("a", 4, (2, 3)), make_set("b", 9, (2, 3))]
    batch = collate_sets(sets, 3, torch.Generator().manual_seed(0))
    assert batch.ctx_a.shape == (2, 3, 2, 3) and batch.tgt_a.shape == (2, 6, 2, 3)
    assert batch.tgt_mask.sum(1).tolist() == [1, 6]
    for i, s in enumerate(sets):
        ids = batch.tgt_ids[i][batch.tgt_mask[i]]
        torch.testing.assert_close(batch.tgt_a[i][batch.tgt_mask[i]], s.a[ids])
        assert (batch.tgt_ids[i][~batch.tgt_mask[i]] == -1).all()


def test_iterate_covers_every_annotator_once():
    crowd = Crowd.from_sets([make_set(f"u{i}", 5) for i in range(7)])
    seen = [aid for b in iterate_set_batches(crowd, 3, 2, generator=torch.Generator().manual_seed(0)) for aid in b.annotator_ids]
    assert sorted(seen) == sorted(crowd.annotator_ids)
