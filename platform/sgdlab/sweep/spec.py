"""Sweep files: `sweeps/NAME.yaml`.

    description: one paragraph shown by --dry-run
    overrides:            # applied to every trial, Hydra override grammar
      - data=digits_parity
      - model.width=32
    axes:                 # swept keys; the trials are the cartesian product of the axes
      model.alpha: 1, 1024          # Hydra sweep grammar: a,b,c | range(...) | choice(...)
      optim.temperature: [1e-3, 1e-1]   # or a YAML list

Overrides given on the command line come last: a plain value replaces an axis, a sweep value adds one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sgdlab import paths
from sgdlab.config.schema import ConfigError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    overrides: list[str]
    axes: dict[str, str] = field(default_factory=dict)

    def override_strings(self) -> list[str]:
        """Base overrides then one `key=a,b,c` sweep override per axis."""
        return [*self.overrides, *(f"{key}={values}" for key, values in self.axes.items())]


def available() -> list[str]:
    return sorted(p.stem for p in paths.sweeps_dir().glob("*.yaml"))


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name.endswith(".yaml"):
        raise ConfigError(f"sweep name {name!r}: use letters, digits, '_', '-' and '.' only (no paths); "
                          f"available: {', '.join(available()) or 'none'}")
    return name


def _axis_string(key: str, values: object) -> str:
    if isinstance(values, list):
        if not values:
            raise ConfigError(f"axes.{key}: empty axis")
        return ",".join(str(v) for v in values)
    if values is None or str(values).strip() == "":
        raise ConfigError(f"axes.{key}: empty axis")
    return str(values)


def load(name: str) -> SweepSpec:
    """Read and check sweeps/NAME.yaml; unknown names and malformed files raise ConfigError."""
    check_name(name)
    path: Path = paths.sweeps_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown sweep {name!r}; available: {', '.join(available()) or 'none'}")
    try:
        body = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    allowed = {"description", "overrides", "axes"}
    if not isinstance(body, dict) or set(body) - allowed:
        extra = sorted(set(body) - allowed) if isinstance(body, dict) else ["<not a mapping>"]
        raise ConfigError(f"{path.name}: unknown key {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")
    overrides = body.get("overrides") or []
    axes = body.get("axes") or {}
    if not isinstance(overrides, list) or not isinstance(axes, dict):
        raise ConfigError(f"{path.name}: 'overrides' must be a list and 'axes' a mapping")
    return SweepSpec(
        name=name,
        description=str(body.get("description", "")).strip(),
        overrides=[str(o) for o in overrides],
        axes={str(k): _axis_string(str(k), v) for k, v in axes.items()},
    )
