"""Trial configuration: Hydra composition (compose) and typed validation (schema)."""

from sgdlab.config.schema import ConfigError

__all__ = ["ConfigError"]
