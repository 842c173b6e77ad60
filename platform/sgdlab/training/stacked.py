"""Stacked members: trees (nested dicts and tuples) of per-member tensors stacked along dim 0 (parameters,
optimizer states, outputs), and functions of one member applied to every member of such trees.
"""

from __future__ import annotations

import torch
from torch.func import vmap


def tree_map(fn, tree, *others):
    """fn applied leaf by leaf to nested dicts and tuples of tensors (parameters, optimizer states, outputs)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(o[k] for o in others)) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, *leaves) for leaves in zip(tree, *others))
    return fn(tree, *others)


def take(tree, rows):
    """Members at `rows` (a list) of a stacked tree, or one member (an int) as its own copy."""
    if isinstance(rows, int):
        return tree_map(lambda x: x[rows].clone(), tree)
    index = torch.tensor(rows, dtype=torch.long)
    return tree_map(lambda x: x[index.to(x.device)], tree)


def only_member(tree):
    """The one member of a stacked tree of one, as views."""
    return tree_map(lambda x: x[0], tree)


def stacked_one(tree):
    """A tree of one member stacked (a member dimension of one)."""
    return tree_map(lambda x: x.unsqueeze(0), tree)


def per_member(fn, alone=None):
    """fn vmapped over the leading (member) dimension of its arguments (the first a tensor or a dict of them).
    A pack of one calls `alone` (default fn) directly: the same operations without vmap's cost per call (about a
    millisecond, as much as a small model's step)."""
    batched, alone = vmap(fn), alone or fn

    def call(*args):
        first = args[0] if isinstance(args[0], torch.Tensor) else next(iter(args[0].values()))
        if len(first) > 1:  # one entry per member
            return batched(*args)
        return stacked_one(alone(*only_member(args)))

    return call
