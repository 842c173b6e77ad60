"""Mini-batch sampling without a generator object: a counter-based hash, vectorized over the members of a pack.

At step s, member m (seed k) uses the B training indices i < P with the smallest keys
    key(k, s, i) = h(h(h(k) xor s) xor g(i)),   h = mix32, g(i) = spread(i) = i * 0x9E3779B1 mod 2^32
(training/counter_random.py), ties broken by i. That is a uniformly random subset of B distinct points, and it
depends only on (k, s): no random-number generator state to carry, checkpoint or keep per member, so a pack of
thousands of members draws all its batches with a few elementwise operations and one top-k on the device.
"""

from __future__ import annotations

import torch

from sgdlab.training.counter_random import MASK32, mix32, spread

INDEX_BITS = 24  # data sets up to 16.7M points


def batch_indices(seeds: torch.Tensor, steps: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """(M, B) distinct indices in [0, n), in the order of their keys, for members with these seeds at these steps
    (int64, shape (M,))."""
    if n >= 1 << INDEX_BITS:
        raise ValueError(f"data.n_train = {n}: the sampler handles at most {1 << INDEX_BITS} training points")
    i = torch.arange(n, device=seeds.device, dtype=torch.int64)
    member = mix32(mix32(seeds & MASK32) ^ (steps & MASK32))
    keys = (mix32(member[:, None] ^ spread(i)[None, :]) << INDEX_BITS) | i
    return torch.topk(keys, batch_size, dim=1, largest=False, sorted=True).values & ((1 << INDEX_BITS) - 1)
