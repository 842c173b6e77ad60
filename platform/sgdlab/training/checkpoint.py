"""Checkpoints as bytes: a training snapshot (or final parameters) plus the trial's config.

Saved with torch.save and loaded with torch.load(weights_only=True): only tensors and plain containers, never
arbitrary pickled objects, so a checkpoint from a shared store cannot run code.
"""

from __future__ import annotations

import io

import torch

LAST = "checkpoint/last.pt"  # resumable snapshot, replaced every train.checkpoint_every steps
FINAL = "checkpoint/final.pt"  # parameters at the end of training, for probes


def to_bytes(state: dict, config: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state": state, "config": config}, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, device: str = "cpu") -> dict:
    """{'state': ..., 'config': ...} from bytes written by to_bytes."""
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
