"""Jobs: plain functions of a config dict (no Ray, no Hydra) that train or probe and record through tracking/."""
