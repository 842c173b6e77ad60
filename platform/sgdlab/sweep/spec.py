"""Sweep files: `sweeps/NAME.yaml`.

    description: one paragraph shown by --dry-run
    overrides:            # applied to every trial, Hydra override grammar
      - data=digits_parity
      - model.width=32
    axes:                 # swept keys; the trials are the cartesian product of the axes
      model.alpha: 1, 1024          # Hydra sweep grammar: a,b,c | range(...) | choice(...)
      optim.temperature: [1e-3, 1e-1]   # or a YAML list
    scales:               # optional presets chosen with scale=NAME on the command line (default: small)
      small: []
      paper: [data.n_train=16384, "seed=range(5)"]
    refine:               # optional: locate, along one axis, where a criterion turns true (sweep/refine.py)
      axis: optim.lr
      criterion: outcome == diverged

Order of application: overrides, axes, the chosen scale's overrides, then the command line's overrides (a plain
value replaces an axis, a sweep value adds one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from sgdlab import paths
from sgdlab.config.schema import MAX_NESTING, ConfigError
from sgdlab.sweep.refine import Refine, parse_refine

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME = 100  # characters: a sweep name is a file name and an MLflow experiment name


DEFAULT_SCALE = "small"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    overrides: list[str]
    axes: dict[str, str] = field(default_factory=dict)
    scales: dict[str, list[str]] = field(default_factory=dict)
    refine: Refine | None = None
    source: str = ""  # the sweep file's real path
    digest: str = ""  # sha256 of its bytes

    def other_definition(self, source: str | None, digest: str | None) -> str | None:
        """Why this file may not run the sweep whose records name the file `source` with sha256 `digest` as its
        definition, or None: another file (another path, other content) defined it, and the records of both
        would mix in one experiment and report. The same file edited, or the same content elsewhere (a moved
        checkout), is the same definition."""
        if not source or source == self.source or digest == self.digest:
            return None
        return (f"sweep {self.name!r} in this store was defined by {source}, another file than {self.source}: "
                "their records would mix in one experiment; rename one, use another store, or pass --redefine to "
                "make this file the definition")

    def override_strings(self, scale: str = DEFAULT_SCALE) -> list[str]:
        """Base overrides, one `key=a,b,c` sweep override per axis, then the scale's overrides."""
        if self.scales and scale not in self.scales:
            raise ConfigError(f"scale={scale}: unknown scale of sweep {self.name!r}; allowed: "
                              f"{', '.join(self.scales)}")
        if not self.scales and scale != DEFAULT_SCALE:
            raise ConfigError(f"scale={scale}: sweep {self.name!r} defines no scales")
        return [*self.overrides, *(f"{key}={values}" for key, values in self.axes.items()),
                *self.scales.get(scale, [])]


def available() -> list[str]:
    return sorted(p.stem for p in paths.sweeps_dir().glob("*.yaml"))


def check_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise ConfigError(f"sweep name {name[:20]!r}...: at most {MAX_NAME} characters, got {len(name)}")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last), and
    that aliases (*name, which can expand a small file into an exponentially large one) and nesting deeper than
    MAX_NESTING are refused."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor}: sweep files take no aliases",
                                              event.start_mark)
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f"key {twice!r} given twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(name: str) -> SweepSpec:
    """Read and check sweeps/NAME.yaml; unknown names and malformed files raise ConfigError."""
    check_name(name)
    path: Path = paths.sweeps_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown sweep {name!r}; available: {', '.join(available()) or 'none'}")
    try:
        data = path.read_bytes()
        body = yaml.load(data.decode(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                          f"{exc.start})") from None
    allowed = {"description", "overrides", "axes", "scales", "refine"}
    if not isinstance(body, dict) or set(body) - allowed:
        extra = sorted(set(body) - allowed) if isinstance(body, dict) else ["<not a mapping>"]
        raise ConfigError(f"{path.name}: unknown key {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")
    overrides = body.get("overrides") or []
    axes = body.get("axes") or {}
    scales = body.get("scales") or {}
    if not isinstance(overrides, list) or not isinstance(axes, dict) or not isinstance(scales, dict) or not all(
            isinstance(v, list) or v is None for v in scales.values()):
        raise ConfigError(f"{path.name}: 'overrides' must be a list, 'axes' a mapping, 'scales' a mapping of lists")
    lines = [*overrides, *(line for scale in scales.values() for line in scale or [])]
    keys = [*map(str, axes), *(str(line).split("=", 1)[0] for line in lines)]
    if any(key.lstrip("+~") == "tracking.uri" for key in keys):
        raise ConfigError(f"{path.name}: tracking.uri: a sweep file does not choose the store (its records would go "
                          "elsewhere unnoticed); set MLFLOW_TRACKING_URI or pass tracking.uri=... to the command")
    return SweepSpec(
        name=name,
        description=str(body.get("description", "")).strip(),
        overrides=[str(o) for o in overrides],
        axes={str(k): _axis_string(str(k), v) for k, v in axes.items()},
        scales={str(k): [str(o) for o in (v or [])] for k, v in scales.items()},
        refine=parse_refine(body["refine"], f"{path.name}: refine") if body.get("refine") is not None else None,
        source=str(path.resolve()),
        digest=hashlib.sha256(data).hexdigest(),
    )


def split_scale(overrides: list[str]) -> tuple[str, list[str]]:
    """Take `scale=NAME` out of command-line overrides: (scale, the other overrides)."""
    scales = [o.split("=", 1)[1] for o in overrides if o.startswith("scale=")]
    if len(scales) > 1:
        raise ConfigError(f"scale: given {len(scales)} times")
    return (scales[0] if scales else DEFAULT_SCALE), [o for o in overrides if not o.startswith("scale=")]


def split_refine(spec: SweepSpec, overrides: list[str]) -> tuple[SweepSpec, list[str]]:
    """Apply `refine.KEY=VALUE` command-line overrides to the sweep's refine block: (spec, the other overrides)."""
    changes = dict(o.split("=", 1) for o in overrides if o.startswith("refine."))
    rest = [o for o in overrides if not o.startswith("refine.")]
    if not changes:
        return spec, rest
    if spec.refine is None:
        raise ConfigError(f"{next(iter(changes))}: sweep {spec.name!r} has no refine block")
    fields = {k: v for k, v in vars(spec.refine).items()}
    for key, value in changes.items():
        name = key.split(".", 1)[1]
        if name not in fields:
            raise ConfigError(f"{key}: unknown refine key; allowed: {', '.join(sorted(fields))}")
        try:
            fields[name] = yaml.load(value, Loader=_UniqueKeyLoader) if value.strip() else value
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: not a plain YAML value ({str(exc).splitlines()[0]})") from None
    return replace(spec, refine=parse_refine(fields, "refine")), rest
