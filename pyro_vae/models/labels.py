"""Labels as the label models' programs take them: one-hot rows, or every label at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Integer ``labels`` of shape ``(B,)`` as one-hot rows ``(B, num_classes)`` in ``like``'s
    dtype and device: the y the programs take.

    :param labels: integer labels 0 .. K-1, ``(B,)``, on any device.
    :param num_classes: K, the number of classes.
    :param like: a tensor whose dtype and device the rows take.
    """
    return F.one_hot(labels.to(like.device), num_classes).to(like.dtype)


def every_label(num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """All ``num_classes`` one-hot labels at once, ``(K, 1, K)``: the shape Pyro's parallel
    enumeration gives M2's y, broadcasting against a batch of B examples to ``(K, B, ...)``.

    :param num_classes: K, the number of classes.
    :param like: a tensor whose dtype and device the labels take.
    """
    return torch.eye(num_classes, dtype=like.dtype, device=like.device).unsqueeze(1)
