"""From run records to results: trial frames, phase diagrams, fits, plots and the sweep report.

Imports pandas, numpy and matplotlib (Agg canvas) only; never mlflow, ray, torch or hydra.
"""
