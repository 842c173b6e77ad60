"""Networks in the mean-field / alpha parametrization of Sclocchi, Geiger & Wyart (ICML 2023).

All weights are N(0, 1) and there are no biases. A hidden layer computes act(W h / sqrt(fan_in)) / c_act with
c_act = sqrt(E[act(z)^2]), z ~ N(0, 1), so that every pre-activation has unit variance at initialization.
The readout is mean-field: f(w, x) = v . h / width. The perceptron is f(w, x) = w . x / sqrt(d). The VGG
(stages of convolutions and max pools, for CIFAR-size images and multi-worker trials) follows the CNN's scaling.
The predictor trained is F(x) = alpha * (f(w, x) - f(w0, x)) (alpha * f(w, x) when model.center is false);
Each network is written once, as `function(params, x)`: a pure function of a parameter dict (named as by
named_parameters), which the training loop, vmap and the probes call directly; `forward` applies it to the
module's own parameters.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from torch import nn

from sgdlab.training import counter_random

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
    "softplus": nn.functional.softplus,
}


@cache
def activation_scale(name: str) -> float:
    """c = sqrt(E[act(z)^2]) for z ~ N(0, 1), by 200-point Gauss-Hermite quadrature (exact to ~1e-12)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    values = ACTIVATIONS[name](torch.from_numpy(nodes)).numpy()
    return float(math.sqrt(np.sum(weights * values**2) / math.sqrt(2 * math.pi)))


class Network(nn.Module):
    """A network whose maths is `function(params, x)`."""

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(dict(self.named_parameters()), x)


class MeanFieldMLP(Network):
    def __init__(self, d_in: int, depth: int, width: int, activation: str, n_out: int):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.hidden = nn.ParameterList(nn.Parameter(torch.empty(b, a)) for a, b in zip(sizes, sizes[1:]))
        self.readout = nn.Parameter(torch.empty(n_out, width))
        self.act, self.c = ACTIVATIONS[activation], activation_scale(activation)
        self.width = width
        self.layers = [(f"hidden.{i}", math.sqrt(a)) for i, a in enumerate(sizes[:-1])]  # (name, sqrt(fan_in))

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for name, root_fan_in in self.layers:
            h = self.act(h @ params[name].T / root_fan_in) / self.c
        return h @ params["readout"].T / self.width


class Perceptron(Network):
    def __init__(self, d_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, d_in))
        self.root_d = math.sqrt(d_in)

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ params["weight"].T / self.root_d


class MeanFieldCNN(Network):
    """3x3 convolutions (padding 1) in the same scaling, global average pool, mean-field readout."""

    def __init__(self, in_channels: int, depth: int, channels: int, activation: str, n_out: int):
        super().__init__()
        sizes = [in_channels] + [channels] * depth
        self.convs = nn.ParameterList(nn.Parameter(torch.empty(b, a, 3, 3)) for a, b in zip(sizes, sizes[1:]))
        self.readout = nn.Parameter(torch.empty(n_out, channels))
        self.act, self.c = ACTIVATIONS[activation], activation_scale(activation)
        self.channels = channels

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(len(self.convs)):
            w = params[f"convs.{i}"]
            fan_in = w.shape[1] * 9
            h = self.act(nn.functional.conv2d(h, w / math.sqrt(fan_in), padding=1)) / self.c
        return h.mean(dim=(2, 3)) @ params["readout"].T / self.channels


class MeanFieldVGG(Network):
    """A small VGG in the same scaling: stages of `convs_per_stage` 3x3 convolutions (padding 1, no biases,
    N(0,1) weights / sqrt(fan_in), normalized activation), each stage followed by a 2x2 max pool (a side already
    of length 1 is not pooled), then a global average pool and the mean-field readout v.h / stages[-1].
    Pre-activations have unit variance at initialization up to the max pools, which raise the second moment
    of their outputs by an O(1) factor (the scaling in width is unchanged)."""

    def __init__(self, in_channels: int, stages: list[int], convs_per_stage: int, activation: str, n_out: int):
        super().__init__()
        sizes = [in_channels] + [c for c in stages for _ in range(convs_per_stage)]
        self.convs = nn.ParameterList(nn.Parameter(torch.empty(b, a, 3, 3)) for a, b in zip(sizes, sizes[1:]))
        self.readout = nn.Parameter(torch.empty(n_out, stages[-1]))
        self.act, self.c = ACTIVATIONS[activation], activation_scale(activation)
        self.convs_per_stage, self.channels = convs_per_stage, stages[-1]

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(len(self.convs)):
            w = params[f"convs.{i}"]
            h = self.act(nn.functional.conv2d(h, w / math.sqrt(w.shape[1] * 9), padding=1)) / self.c
            if (i + 1) % self.convs_per_stage == 0:
                h = nn.functional.max_pool2d(h, kernel_size=(min(2, h.shape[2]), min(2, h.shape[3])), ceil_mode=True)
        return h.mean(dim=(2, 3)) @ params["readout"].T / self.channels


def build(cfg: dict, input_shape: tuple[int, ...], n_out: int) -> Network:
    """The network of a `model` config group for inputs of shape (C, H, W)."""
    d_in = int(np.prod(input_shape))
    if cfg["name"] == "mlp":
        return MeanFieldMLP(d_in, cfg["depth"], cfg["width"], cfg["activation"], n_out)
    if cfg["name"] == "perceptron":
        return Perceptron(d_in, n_out)
    if cfg["name"] == "cnn":
        return MeanFieldCNN(input_shape[0], cfg["depth"], cfg["channels"], cfg["activation"], n_out)
    if cfg["name"] == "vgg":
        return MeanFieldVGG(input_shape[0], list(cfg["stages"]), cfg["convs_per_stage"], cfg["activation"], n_out)
    raise ValueError(f"model.name: unknown model {cfg['name']!r}")


def init_params(module: nn.Module, seeds: list[int], dtype: torch.dtype, device: torch.device | str = "cpu"
                ) -> dict:
    """Parameters of len(seeds) copies of the network stacked along dim 0, every weight N(0, 1): parameter
    tensor j of the copy with seed s holds counter_random.normal(s, stream=j), drawn in float64 and rounded to
    dtype. A network's weights depend on its seed only (alone or in a pack, on any device)."""
    keys = torch.tensor(seeds, dtype=torch.int64, device=device)
    return {name: counter_random.normal(keys, j, p.numel()).reshape(len(seeds), *p.shape).to(dtype)
            for j, (name, p) in enumerate(module.named_parameters())}


def network(module: Network):
    """f(params, x): the module as a pure function of its parameter dict."""
    return module.function
