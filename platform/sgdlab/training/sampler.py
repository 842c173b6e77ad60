"""Mini-batch sampling without a generator object: a counter-based hash, O(B) work per member and step.

At step s, member m (seed k) has the key K = h(h(k) xor s) and the stream of uniform indices
    u_j = floor(h(K xor g(j)) P / 2^32),   j = 0, 1, 2, ...,   h = mix32, g(j) = spread(j)
(training/counter_random.py; the multiply-shift map is uniform on [0, P) to within P / 2^32). Its batch is the first
B distinct values of the stream, in the order drawn: a uniformly random ordered set of B distinct points, found
after B + B^2 / 2P draws on average. When 2B > P (where that rejection would take long) the batch is instead
the B indices i < P with the smallest keys (h(K xor g(i)) << 24) | i, which costs O(P).

A batch depends only on (k, s): no random-number generator state to carry, checkpoint or keep per member. It is
the same alone, in any pack and on any device (tensor operations everywhere; a test checks them against the
stream drawn with Python integers). The training loop draws through Batches, many steps at a time, so that the
dozen small tensor operations of a draw are shared by about a thousand (member, step) batches.
"""

from __future__ import annotations

import numpy as np
import torch

from sgdlab.training.counter_random import MASK32, mix32, spread

INDEX_BITS = 24  # data sets up to 16.7M points
AHEAD_ROWS = 1024  # Batches draws this many (member, step) batches at a time


def batch_indices(seeds: torch.Tensor, steps: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """(M, B) distinct indices in [0, n), for members with these seeds at these steps (int64, shape (M,))."""
    if n >= 1 << INDEX_BITS:
        raise ValueError(f"data.n_train = {n}: the sampler handles at most {1 << INDEX_BITS} training points")
    if 2 * batch_size > n:
        return smallest_keys(seeds, steps, n, batch_size)
    return first_distinct_tensor(mix32(mix32(seeds & MASK32) ^ (steps & MASK32)), n, batch_size)


def first_distinct_tensor(keys: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """The first batch_size distinct values of the stream of every member key at once: draw a prefix of each
    stream, mark the values seen earlier in it (a sort by value, then by position), keep the first batch_size
    others; a longer prefix if a member's was short (the result does not depend on the prefix's length)."""
    draws_per_member = batch_size + 4 + batch_size * batch_size // n
    while True:
        j = torch.arange(draws_per_member, device=keys.device, dtype=torch.int64)
        draws = (mix32(keys[:, None] ^ spread(j)[None, :]) * n) >> 32
        order = torch.argsort(draws * draws_per_member + j, dim=1)  # unique sort keys: a stable order
        ordered = draws.gather(1, order)
        seen_sorted = torch.zeros_like(ordered, dtype=torch.bool)
        seen_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        new = ~torch.empty_like(seen_sorted).scatter_(1, order, seen_sorted)
        count = new.cumsum(dim=1)
        if bool((count[:, -1] >= batch_size).all()):
            return draws[new & (count <= batch_size)].view(len(keys), batch_size)
        draws_per_member *= 2


def smallest_keys(seeds: torch.Tensor, steps: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """The large-batch rule: the batch_size indices i < n of smallest (h(K xor g(i)) << 24) | i, in that order."""
    i = torch.arange(n, device=seeds.device, dtype=torch.int64)
    member = mix32(mix32(seeds & MASK32) ^ (steps & MASK32))
    keys = (mix32(member[:, None] ^ spread(i)[None, :]) << INDEX_BITS) | i
    return torch.topk(keys, batch_size, dim=1, largest=False, sorted=True).values & ((1 << INDEX_BITS) - 1)


class Batches:
    """The batches of a pack's members at their current steps (batch_indices, the same indices), drawn for the
    next AHEAD_ROWS / M steps at a time: one call of the tensor sampler then serves many steps, which for a
    small pack costs less than a draw per step. Contract: between calls every member advances by the same
    number of steps, unless `seeds` is another tensor (the pack's members changed), which draws afresh."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size
        self.seeds, self.first, self.drawn = None, 0, torch.empty(0)

    def __call__(self, seeds: torch.Tensor, steps: np.ndarray) -> torch.Tensor:
        """(M, B) indices of the members with these seeds at these steps (host integers)."""
        return self.block(seeds, steps, 1)[0]

    def block(self, seeds: torch.Tensor, steps: np.ndarray, count: int) -> torch.Tensor:
        """(count, M, B) indices of the members' batches at `count` consecutive steps from `steps`."""
        k = int(steps[0]) - self.first
        if seeds is not self.seeds or not (0 <= k and k + count <= self.drawn.shape[1]):
            ahead = 1 if 2 * self.batch_size > self.n else AHEAD_ROWS // len(seeds)  # smallest_keys is O(P)
            ahead = max(ahead, count)
            grid = torch.as_tensor(steps, device=seeds.device)[:, None] + torch.arange(ahead, device=seeds.device)
            rows = batch_indices(seeds.repeat_interleave(ahead), grid.flatten(), self.n, self.batch_size)
            self.seeds, self.first, self.drawn, k = seeds, int(steps[0]), rows.view(len(seeds), ahead, -1), 0
        return self.drawn[:, k:k + count].transpose(0, 1)
