"""Counter-based random numbers: every value is a pure function of (seed, stream, index), computed elementwise
on whatever device holds the tensors. No generator state to carry, checkpoint or keep per trial, so a pack of
thousands of trials draws its random numbers in a few tensor operations, and a trial draws the same numbers
alone or in any pack, on the CPU or a GPU.

The mixer is a bijective 32-bit xor-shift-multiply hash (Wellons' lowbias32). Streams: training/sampler.py keys
batches by (seed, step); `normal` keys initial weights by (seed, parameter tensor).
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B1  # odd: i -> i * GOLDEN mod 2^32 is a bijection that spreads consecutive counters
NORMAL_DOMAIN = 0x6A09E667  # separates the initialization streams from the sampler's step streams
# Values made at once: a chunk's int64 temporaries stay in a CPU's cache; a GPU takes large chunks.
CPU_CHUNK, DEVICE_CHUNK = 1 << 16, 1 << 24


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixer on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32  # int64 products wrap; only the low 32 bits are kept
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def spread(i: torch.Tensor) -> torch.Tensor:
    """Counters i (int64, < 2^32) mapped to well-separated 32-bit words."""
    return (i * GOLDEN) & MASK32


def normal(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(M, n) float64 standard normal variates for members with these seeds (int64, shape (M,)), by Box-Muller:
    z_e = sqrt(-2 ln u) cos(2 pi v), with u = (w(2e) + 1) / 2^32 in (0, 1] and v = w(2e + 1) / 2^32, where
    w(c) = mix32(mix32(key ^ spread(c))) and key = mix32(mix32(seed) ^ mix32(DOMAIN ^ stream)).
    (32-bit uniforms: the tails are cut at |z| = 6.66.)"""
    key = mix32(mix32(seeds & MASK32) ^ mix32(torch.tensor(NORMAL_DOMAIN ^ stream, device=seeds.device)))
    out = torch.empty(len(seeds), n, dtype=torch.float64, device=seeds.device)
    rows = max(1, (CPU_CHUNK if seeds.device.type == "cpu" else DEVICE_CHUNK) // max(1, n))
    counters = torch.arange(n, device=seeds.device, dtype=torch.int64)
    first, second = spread(2 * counters), spread(2 * counters + 1)
    for r in range(0, len(seeds), rows):
        k = key[r:r + rows, None]
        u = (mix32(mix32(k ^ first)) + 1).double() / 2.0**32
        v = mix32(mix32(k ^ second)).double() / 2.0**32
        out[r:r + rows] = torch.sqrt(-2.0 * torch.log(u)) * torch.cos((2.0 * math.pi) * v)
    return out
