"""Training (torch only): data sets, alpha-scaled models, losses, pure optimizers and the training loop."""
