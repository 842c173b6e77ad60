"""Classification data sets, as tensors, drawn reproducibly from `data.seed`: exactly data.n_train training points
and data.n_test test points (or one clear error).

Labels are class indices; for the binary tasks class 1 is the label +1 of the hinge loss; `digits` keeps the ten
digit classes (for the one-hot MSE of the edge-of-stability sweeps).
Inputs are centred with the training mean and each scaled to norm sqrt(d), except the generated data sets drawn
as they must be (DRAWN_AS_IS): the teacher perceptron's inputs are left Gaussian so that the density of x_1 near the
boundary is exactly the one asked for, and the sphere field's lie on the sphere of radius sqrt(d) already.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# Images available per pool; schema-independent facts used for clear errors.
DIGITS_IMAGES = 1797
CLASSES = {"digits": 10}  # the others are binary


class DataUnavailable(FileNotFoundError):
    """A data set that must be read from a local folder is not there."""


@dataclass
class Dataset:
    x_train: torch.Tensor  # (P, *input_shape)
    y_train: torch.Tensor  # (P,) int64 class index
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Dataset":
        return Dataset(self.x_train.to(device, dtype), self.y_train.to(device), self.x_test.to(device, dtype),
                       self.y_test.to(device), self.n_classes)


def _normalize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre with the training mean, then put every input on the sphere of radius sqrt(d)."""
    mean = x_train.mean(axis=0, keepdims=True)
    d = x_train[0].size
    out = []
    for x in (x_train - mean, x_test - mean):
        flat = x.reshape(len(x), -1)
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        out.append((flat * np.sqrt(d) / np.maximum(norms, 1e-12)).reshape(x.shape))
    return out[0], out[1]


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_test: int | None, seed: int, what: str):
    if n_train + (n_test or 1) > len(x):
        raise ValueError(f"data.n_train: {what} has {len(x)} examples; P = {n_train} plus a test set does not fit")
    order = np.random.default_rng(seed).permutation(len(x))
    train, rest = order[:n_train], order[n_train:]
    test = rest if n_test is None else rest[:n_test]
    return x[train], y[train], x[test], y[test]


def _draw(x_pool: np.ndarray, y_pool: np.ndarray, n: int | None, seed: int, what: str):
    n = len(x_pool) if n is None else n
    if n > len(x_pool):
        raise ValueError(f"{what} has {len(x_pool)} examples; {n} requested")
    idx = np.random.default_rng(seed).permutation(len(x_pool))[:n]
    return x_pool[idx], y_pool[idx]


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float64)[:, None], digits.target.astype(np.int64)  # (1797, 1, 8, 8), 0..9


def digits_parity(cfg: dict) -> tuple:
    x, digit = _digit_images()
    return _split(x, (digit % 2 == 0).astype(np.int64), cfg["n_train"], cfg["n_test"], cfg["seed"], "digits")


def digits(cfg: dict) -> tuple:
    """The ten classes of scikit-learn's digits."""
    return _split(*_digit_images(), cfg["n_train"], cfg["n_test"], cfg["seed"], "digits")


def mnist1d_parity(cfg: dict) -> tuple:
    """mnist1d generates num_samples // 10 signals per class, shuffled by its seed: a pool of the next multiple of
    10 at or above P + n_test, whose first P signals are the training set and the next n_test the test set."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    n_train, n_test = cfg["n_train"], cfg["n_test"] or 1000
    args.num_samples = 10 * -(-(n_train + n_test) // 10)
    args.train_split = 1.0  # the whole pool in d["x"]; the split is made here, exactly
    args.seed = cfg["seed"]
    d = make_dataset(args)  # generated locally from the package's templates, nothing downloaded
    x, y = np.asarray(d["x"], np.float64)[:, None, None], (np.asarray(d["y"]) % 2 == 0).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def teacher_perceptron(cfg: dict) -> tuple:
    """x ~ N(0, I_d) except |x_1| ~ density prop. to |x_1|^chi exp(-x_1^2/2): |x_1| = sqrt(2 G), G ~ Gamma((chi+1)/2)."""
    rng = np.random.default_rng(cfg["seed"])
    n = cfg["n_train"] + (cfg["n_test"] or 8192)
    x = rng.standard_normal((n, cfg["dim"]))
    radius = np.sqrt(2.0 * rng.gamma((cfg["chi"] + 1.0) / 2.0, 1.0, size=n))
    x[:, 0] = rng.choice([-1.0, 1.0], size=n) * radius
    y = (x[:, 0] > 0).astype(np.int64)
    x = x[:, None, None, :]
    p = cfg["n_train"]
    return x[:p], y[:p], x[p:], y[p:]


def abs_power_mean(dim: int, power: float) -> float:
    """m_a = E|u_1|^a for u uniform on S^{d-1}: u_1^2 ~ Beta(1/2, (d-1)/2), so
    m_a = Gamma((1+a)/2) Gamma(d/2) / (Gamma(1/2) Gamma((d+a)/2))."""
    return math.exp(math.lgamma((1 + power) / 2) + math.lgamma(dim / 2) - math.lgamma(0.5)
                    - math.lgamma((dim + power) / 2))


def _sphere_streams(seed: int) -> list[np.random.SeedSequence]:
    """Three independent streams of data.seed: the teacher, the training points, the test points."""
    return np.random.SeedSequence(seed).spawn(3)


def sphere_field_teacher(seed: int, dim: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher of sphere_field: H = width directions theta_h uniform on S^{d-1} and signs s_h = +-1."""
    rng = np.random.default_rng(_sphere_streams(seed)[0])
    theta = rng.standard_normal((width, dim))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True), rng.choice([-1.0, 1.0], size=width)


def sphere_field_values(u: np.ndarray, theta: np.ndarray, signs: np.ndarray, power: float) -> np.ndarray:
    """f*(u) = H^-1/2 sum_h s_h (|theta_h . u|^a - m_a) at points u of the unit sphere (rows)."""
    mean = abs_power_mean(theta.shape[1], power)
    field = np.zeros(len(u))
    for start in range(0, len(theta), 1024):  # (n, 1024) projections at a time
        block = slice(start, start + 1024)
        field += (np.abs(u @ theta[block].T) ** power - mean) @ signs[block]
    return field / math.sqrt(len(theta))


def sphere_field(cfg: dict) -> tuple:
    """A smooth target on a low-dimensional sphere (Petrini, Cagnetta, Vanden-Eijnden & Wyart, NeurIPS 2022, the
    Gaussian random field of their regression task), as binary labels: u uniform on S^{d-1}, y = sign f*(u) with

        f*(u) = H^-1/2 sum_{h<=H} s_h (|theta_h . u|^a - m_a),   theta_h uniform on S^{d-1}, s_h = +-1,

    d = data.dim, a = data.power, H = data.teacher_width, m_a = E_u |u_1|^a (abs_power_mean). Over the teacher's draw
    f* has the covariance of the random-feature kernel of |.|^a (their ~infinite-width |.|^a teacher, H -> inf: a
    Gaussian field of smoothness a + 1/2); subtracting m_a removes its constant harmonic (the mean of f* over the
    sphere is exactly 0), so about half the labels are +1. Inputs x = sqrt(d) u (norm sqrt(d), as every data set).
    The teacher, the training points and the test points come from three streams of data.seed: the training set of a
    larger P extends the smaller one, and the test set does not depend on P."""
    dim, power = cfg["dim"], cfg["power"]
    teacher = sphere_field_teacher(cfg["seed"], dim, cfg["teacher_width"])
    _, train_stream, test_stream = _sphere_streams(cfg["seed"])
    out = []
    for stream, n in ((train_stream, cfg["n_train"]), (test_stream, cfg["n_test"] or 8192)):
        u = np.random.default_rng(stream).standard_normal((n, dim))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        y = (sphere_field_values(u, *teacher, power) > 0).astype(np.int64)
        out += [math.sqrt(dim) * u[:, None, None, :], y]
    return tuple(out)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(root: Path, stem: str, dataset: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataUnavailable(f"{dataset}: {root / stem}[.gz] not found; put the files in {root} "
                          f"or set data.root (or SGDLAB_DATA_DIR)")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format): magic 0x0000 + type byte 0x08 (uint8) + ndim, big-endian dims, data."""
    with _open(path) as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def mnist_parity(cfg: dict) -> tuple:
    root = Path(cfg["root"])
    pools = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", "MNIST")).astype(np.float64)[:, None]
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", "MNIST"))
        pools.append((images, (labels % 2 == 0).astype(np.int64)))
    x_tr, y_tr = _draw(*pools[0], cfg["n_train"], cfg["seed"], "MNIST train")
    x_te, y_te = _draw(*pools[1], cfg["n_test"], cfg["seed"], "MNIST test")
    return x_tr, y_tr, x_te, y_te


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow only what plain numpy arrays need, never arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[b"labels"], dtype=np.int64)


CIFAR_ANIMALS = (2, 3, 4, 5, 6, 7)  # bird cat deer dog frog horse; vehicles: airplane automobile ship truck


def cifar10_animals(cfg: dict) -> tuple:
    root = Path(cfg["root"])
    missing = [n for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"] if not (root / n).is_file()]
    if missing:
        raise DataUnavailable(f"CIFAR-10: {root / missing[0]} not found; put the python batches in {root} "
                              f"or set data.root (or SGDLAB_DATA_DIR)")
    train = [read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_pool, y_pool = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_test, y_test = read_cifar_batch(root / "test_batch")
    animal = lambda y: np.isin(y, CIFAR_ANIMALS).astype(np.int64)  # noqa: E731
    x_tr, y_tr = _draw(x_pool.astype(np.float64), animal(y_pool), cfg["n_train"], cfg["seed"], "CIFAR-10 train")
    x_te, y_te = _draw(x_test.astype(np.float64), animal(y_test), cfg["n_test"], cfg["seed"], "CIFAR-10 test")
    return x_tr, y_tr, x_te, y_te


DRAWN_AS_IS = {"teacher_perceptron", "sphere_field"}  # generated inputs that _normalize would distort
LOADERS = {
    "digits_parity": digits_parity,
    "digits": digits,
    "mnist1d_parity": mnist1d_parity,
    "teacher_perceptron": teacher_perceptron,
    "sphere_field": sphere_field,
    "mnist_parity": mnist_parity,
    "cifar10_animals": cifar10_animals,
}


def load(cfg: dict) -> Dataset:
    """The data set of a `data` config group, in float64 on the CPU (the loop casts and moves it). Kept for the
    process's next trials (a Ray worker runs many): callers must not modify it in place."""
    return _load(json.dumps(cfg, sort_keys=True))


@lru_cache(maxsize=4)
def _load(cfg_json: str) -> Dataset:
    cfg = json.loads(cfg_json)
    x_tr, y_tr, x_te, y_te = LOADERS[cfg["name"]](cfg)
    if cfg["name"] not in DRAWN_AS_IS:
        x_tr, x_te = _normalize(x_tr, x_te)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Dataset(t(x_tr).double(), t(y_tr), t(x_te).double(), t(y_te), n_classes=CLASSES.get(cfg["name"], 2))
