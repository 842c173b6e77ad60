"""Trial configuration: Hydra composition (compose), the typed schema (schema), group type checks (typecheck),
whole-trial validation (validation) and recorded configs rerun (recorded)."""

from sgdlab.config.schema import ConfigError

__all__ = ["ConfigError"]
