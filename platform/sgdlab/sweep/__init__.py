"""Sweeps: read a sweep file (spec), expand it into trials (expand), name each trial (identity)."""
