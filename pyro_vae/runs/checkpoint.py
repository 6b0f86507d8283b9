"""Checkpoint files and JSON files: written atomically, read safely.

A checkpoint holds the model weights, the shape of one example (the VAE's other settings are the
run's :class:`~pyro_vae.config.RunConfig`) and the training state
(:class:`~pyro_vae.training.state.TrainState`: epoch and step, optimizer state, random states,
history), so that a run can be resumed exactly. It is written to a temporary file in the same
folder, flushed to disk and renamed over the old one, so a crash mid-write leaves the previous
checkpoint intact; the old one may be kept under another name first (``previous``), renamed too, so
that a checkpoint damaged after it was written (a full disk, a killed copy) still has a complete one
beside it. It is read onto the CPU with ``torch.load(..., weights_only=True)``, which unpickles only
tensors and plain data and refuses anything that would run code.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

from pyro_vae.errors import PyroVAEError
from pyro_vae.files import atomic_write
from pyro_vae.models.vae import VAE
from pyro_vae.training.state import History, TrainState

CHECKPOINT_FORMAT = 2


def save_checkpoint(
    path: str | Path,
    vae: VAE,
    state: TrainState | None = None,
    device: str = "cpu",
    previous: str | Path | None = None,
) -> None:
    """Write ``vae``'s weights and the training state atomically (:func:`atomic_write`).

    Refuses weights that are not finite: a broken run never overwrites a good checkpoint.

    :param path: the checkpoint file.
    :param vae: the VAE whose weights are written.
    :param state: the training state (default: that of a VAE not yet trained).
    :param device: where the weights were trained.
    :param previous: where the checkpoint already at ``path`` is kept, or ``None`` to replace it.
    """
    if not all(bool(torch.isfinite(t).all()) for t in vae.state_dict().values()):
        raise PyroVAEError(
            f"refusing to write non-finite weights to {path}; the previous checkpoint is kept"
        )
    state = state or TrainState()
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "x_shape": list(vae.x_shape),
        "num_classes": vae.config.get("num_classes", 0),
        "device": str(device),
        "model": vae.state_dict(),
        "epoch": state.epoch,
        "history": asdict(state.history),
        "optimizer": state.optimizer,
        "rng": state.rng,
        "step_in_epoch": state.step_in_epoch,
        "partial_losses": state.partial_losses,
        "partial_seconds": state.partial_seconds,
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f), previous)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without executing anything stored in it.

    :param path: the checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise PyroVAEError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no index
        raise PyroVAEError(f"{path} is not a readable checkpoint (truncated or corrupt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damage inside the archive fails anywhere in torch.load
        if _unsafe_globals(path):
            raise PyroVAEError(
                f"{path} holds objects other than tensors and plain data; refusing to load it, "
                "since unpickling them could run code"
            ) from None
        raise PyroVAEError(f"{path} is not a readable checkpoint (corrupt: {_gist(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PyroVAEError(f"{path} is not a pyro-vae checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions the file's pickle would import: none in a checkpoint of ours."""
    try:
        return get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a pickle too damaged to list: it is corrupt, not unsafe
        return []


def _gist(e: Exception) -> str:
    """The exception's type and first line, shortened: for the message, never for a decision."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def train_state(checkpoint: dict[str, Any]) -> TrainState:
    """The :class:`~pyro_vae.training.state.TrainState` stored in a loaded checkpoint, to resume
    from.

    :param checkpoint: a checkpoint as :func:`load_checkpoint` reads it.
    """
    try:
        return TrainState(
            epoch=int(checkpoint["epoch"]),
            step_in_epoch=int(checkpoint.get("step_in_epoch", 0)),
            history=History(**checkpoint["history"]),
            optimizer=checkpoint.get("optimizer"),
            rng=checkpoint.get("rng"),
            partial_losses=list(checkpoint.get("partial_losses", [])),
            partial_seconds=float(checkpoint.get("partial_seconds", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PyroVAEError(f"the checkpoint's training state is incomplete ({e})") from None


def load_weights(vae: VAE, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Put a loaded checkpoint's weights into ``vae``, or say in one line why they do not fit.

    :param vae: a model of the run's config, which receives the weights.
    :param checkpoint: a checkpoint as :func:`load_checkpoint` reads it.
    :param path: the checkpoint's file, for the messages.
    """
    try:
        vae.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, AttributeError) as e:  # no weights, or not a dict of them
        raise PyroVAEError(f"{path} lacks part of its contents ({e})") from None
    except RuntimeError as e:  # load_state_dict's error: missing, unexpected or misshapen weights
        reason = " ".join(str(e).split())
        if len(reason) > 300:
            reason = reason[:300] + " ..."
        raise PyroVAEError(
            f"the weights in {path} do not fit the model of its config ({reason})"
        ) from None
