"""Counter-based normal variates (initial weights): the right distribution, independent across seeds, streams
and positions, and a function of (seed, stream, index) only."""

import math

import torch

from sgdlab.training import models
from sgdlab.training.counter_random import mix32, normal


def test_mixer_is_a_bijection_on_a_sample():
    x = torch.arange(1 << 20)
    assert len(torch.unique(mix32(x))) == 1 << 20


def test_normals_have_the_moments_and_quantiles_of_a_standard_normal():
    z = normal(torch.arange(64), 0, 1 << 14).flatten()  # 2^20 values
    n = len(z)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)  # Var(z^4) = 105 - 9
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)
    # Kolmogorov-Smirnov distance to Phi: 5 sigma of its null distribution is ~1.7 / sqrt(n)
    sorted_z = torch.sort(z).values
    phi = 0.5 * (1 + torch.erf(sorted_z / math.sqrt(2)))
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((phi - ranks).abs().max()) < 1.7 / math.sqrt(n)


def test_seeds_streams_and_neighbouring_positions_are_uncorrelated():
    z = normal(torch.arange(256), 0, 4096)
    other_stream = normal(torch.arange(256), 1, 4096)
    bound = 5 / math.sqrt(z.numel())
    for a, b in ((z[:-1], z[1:]), (z[:, :-1], z[:, 1:]), (z, other_stream)):
        assert abs(float((a * b).mean())) < bound * 1.1
    rows = torch.corrcoef(z)  # 256 seeds: off-diagonal correlations ~ N(0, 1/4096)
    off = rows[~torch.eye(256, dtype=torch.bool)]
    assert float(off.abs().max()) < 6 / math.sqrt(4096)


def test_a_value_depends_on_its_seed_stream_and_index_only():
    seeds = torch.tensor([3, 7, 7, 123456789])
    block = normal(seeds, 2, 1000)
    assert torch.equal(block[1], block[2]) and not torch.equal(block[0], block[1])
    for m in range(4):
        assert torch.equal(normal(seeds[m:m + 1], 2, 1000)[0], block[m])
    assert torch.equal(normal(seeds, 2, 10), block[:, :10])  # a longer draw extends a shorter one


def test_initial_parameters_of_a_pack_are_those_of_its_members_alone():
    module = models.build({"name": "mlp", "depth": 2, "width": 16, "activation": "relu"}, (1, 4, 4), 1)
    pack = models.init_params(module, [5, 0, 9], torch.float32)
    for row, seed in enumerate([5, 0, 9]):
        alone = models.init_params(module, [seed], torch.float32)
        for name in pack:
            assert torch.equal(pack[name][row], alone[name][0])
    assert pack["readout"].shape == (3, 1, 16) and pack["readout"].dtype == torch.float32
