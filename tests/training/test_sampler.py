"""The counter-based mini-batch sampler: distinct indices, a function of (seed, step) only, uniform."""

import torch

from sgdlab.training.sampler import batch_indices


def test_batches_are_distinct_in_range_and_independent_of_the_other_members():
    seeds, steps = torch.tensor([0, 1, 2, 2, 99]), torch.tensor([0, 0, 5, 6, 123456])
    idx = batch_indices(seeds, steps, 300, 32)
    assert idx.shape == (5, 32) and int(idx.min()) >= 0 and int(idx.max()) < 300
    for row in idx:
        assert len(set(row.tolist())) == 32
    for m in range(5):  # a member alone draws what it draws in any pack
        assert torch.equal(batch_indices(seeds[m:m + 1], steps[m:m + 1], 300, 32)[0], idx[m])
    assert not torch.equal(idx[2], idx[3]) and not torch.equal(idx[0], idx[1])


def test_every_point_is_drawn_equally_often():
    """Over 20,000 steps each of 40 points is in a batch of 8 with probability 1/5: counts 4000 +- 57 (1 s.d.)."""
    steps = torch.arange(20_000)
    idx = batch_indices(torch.full_like(steps, 7), steps, 40, 8)
    counts = torch.bincount(idx.flatten(), minlength=40).double()
    assert float(((counts - 4000) ** 2 / 4000).sum()) < 80  # chi-square, 39 dof: mean 39, p(> 80) ~ 1e-4
    pairs = torch.bincount((idx[:, 0] * 40 + idx[:, 1]), minlength=1600)
    assert int(pairs.max()) < 200  # no pair of positions is tied to the other: E = 20,000 / 780 ~ 26 per pair

