"""A trial config as MLflow params: dotted keys (flatten) and one canonical text per value (param_text), shared by
the params a run records, its run name and the columns of the sweep's view in the MLflow UI."""

from __future__ import annotations


def param_text(value) -> str:
    """A config value as a run's param and run name show it, one canonical form per number so that a filter by the
    value a run is named with finds it: an int as itself, a float without a fractional part as an int ('1',
    '1024'; below 1e15), any other float as Python's shortest round-trip repr ('0.001', '1e-05', 'nan');
    anything else as str()."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}: the run's params (each written as param_text)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
