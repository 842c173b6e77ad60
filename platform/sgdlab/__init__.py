"""sgdlab: sweeps over SGD noise and curvature (Hydra configs, Ray scheduling, MLflow records).

Importing the package imports neither torch nor ray; those load only where a job or the scheduler runs.
"""

__version__ = "0.1.0"
