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



def first_distinct(key: int, n: int, batch_size: int) -> list[int]:
    """The stream of the module docstring, drawn one value at a time with Python integers: the first batch_size
    distinct values of floor(h(key xor g(j)) n / 2^32), j = 0, 1, 2, ..."""
    from sgdlab.training.counter_random import mix32, spread

    seen: set[int] = set()
    batch, j = [], 0
    while len(batch) < batch_size:
        i = (mix32(key ^ spread(j)) * n) >> 32
        if i not in seen:
            seen.add(i)
            batch.append(i)
        j += 1
    return batch


def test_the_tensor_sampler_draws_the_stream_of_its_definition():
    """batch_indices (tensor operations, many members at once) against the stream drawn value by value."""
    from sgdlab.training.counter_random import MASK32, mix32

    seeds, steps = torch.arange(40) * 7919, torch.arange(40) * 104729 + 3
    for n, b in ((1024, 8), (64, 16), (33, 16), (60000, 32)):
        keys = [mix32(mix32(k & MASK32) ^ (s & MASK32)) for k, s in zip(seeds.tolist(), steps.tolist())]
        expected = torch.tensor([first_distinct(key, n, b) for key in keys])
        assert torch.equal(batch_indices(seeds, steps, n, b), expected), (n, b)


def test_every_ordered_batch_is_equally_likely():
    """n = 6, B = 2: 30 ordered pairs, each with probability 1/30 (30,000 steps: 1000 +- 31 each)."""
    steps = torch.arange(30_000)
    idx = batch_indices(torch.full_like(steps, 11), steps, 6, 2)
    counts = torch.bincount(idx[:, 0] * 6 + idx[:, 1], minlength=36).double()
    assert float(counts[torch.arange(6) * 7].sum()) == 0  # never the same point twice
    pairs = counts[counts > 0]
    assert len(pairs) == 30 and float(((pairs - 1000) ** 2 / 1000).sum()) < 70  # 29 dof: p(> 70) ~ 3e-5


def test_large_batches_take_the_smallest_keys():
    """2B > P: the O(P) rule (rejection would need ~P log P draws for B = P); still distinct and member-wise."""
    seeds, steps = torch.tensor([0, 1, 2]), torch.tensor([4, 4, 9])
    idx = batch_indices(seeds, steps, 10, 8)
    assert all(len(set(row.tolist())) == 8 for row in idx) and int(idx.max()) < 10
    assert sorted(batch_indices(seeds, steps, 10, 10)[0].tolist()) == list(range(10))
    assert torch.equal(batch_indices(seeds[1:2], steps[1:2], 10, 8)[0], idx[1])


def test_batches_drawn_ahead_are_those_of_each_step():
    """Batches (the loop's sampler) draws AHEAD_ROWS / M steps at a time: the same indices as batch_indices at every
    step, across refills, for resumed members at different steps, and after the pack's members change."""
    import numpy as np

    from sgdlab.training.sampler import AHEAD_ROWS, Batches

    for n, b in ((1024, 8), (10, 8)):  # the stream, and the large-batch rule (drawn step by step)
        batches, seeds, steps = Batches(n, b), torch.tensor([3, 5, 8]), np.array([0, 17, 4000])
        for _ in range(AHEAD_ROWS // 3 + 5):  # past the first refill
            assert torch.equal(batches(seeds, steps), batch_indices(seeds, torch.as_tensor(steps), n, b))
            steps += 1
        seeds, steps = seeds[[0, 2]], steps[[0, 2]]  # a member left: another seeds tensor
        for _ in range(3):
            assert torch.equal(batches(seeds, steps), batch_indices(seeds, torch.as_tensor(steps), n, b))
            steps += 1
