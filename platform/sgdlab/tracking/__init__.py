"""MLflow records (the only package that imports mlflow): tags, the store, trial runs, queries."""
