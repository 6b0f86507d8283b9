"""The run folder on disk: checkpoints and JSON files, written atomically and read safely.

A checkpoint holds the model weights, the run's config and the training state
(:class:`~pyro_vae.train.TrainState`: epoch and step, optimizer state, random states, history), so
that a run can be resumed exactly. It is written to a temporary file in the same folder, flushed to
disk and renamed over the old one, so a crash mid-write leaves the previous checkpoint intact. It
is read with ``torch.load(..., weights_only=True)``, which unpickles only tensors and plain data
and refuses anything that would run code.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import pyro
import torch

from .errors import PyroVAEError
from .model import VAE
from .train import History, TrainState

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: str | Path) -> Any:
    """A JSON file of a run folder, or one clear error if it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PyroVAEError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PyroVAEError(f"{path} is not valid JSON ({e})") from None


def versions() -> dict[str, str]:
    """The versions a run was made with, recorded in its config."""
    from . import __version__

    return {
        "pyro_vae": __version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | Path,
    vae: VAE,
    state: TrainState | None = None,
    *,
    config: dict[str, Any],
) -> None:
    """Write ``vae``'s weights, the config and the training state atomically.

    Refuses weights that are not finite: a broken run never overwrites a good checkpoint.
    """
    if not all(bool(torch.isfinite(t).all()) for t in vae.state_dict().values()):
        raise PyroVAEError(
            f"refusing to write non-finite weights to {path}; the previous checkpoint is kept"
        )
    state = state or TrainState()
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        # through JSON, so that only plain data is stored (a str subclass such as
        # torch.__version__ would make the file unloadable with weights_only=True)
        "config": json.loads(json.dumps(config)),
        "model": vae.state_dict(),
        "epoch": state.epoch,
        "history": asdict(state.history),
        "optimizer": state.optimizer,
        "rng": state.rng,
        "step_in_epoch": state.step_in_epoch,
        "partial_losses": state.partial_losses,
        "partial_seconds": state.partial_seconds,
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def train_state(checkpoint: dict[str, Any]) -> TrainState:
    """The :class:`~pyro_vae.train.TrainState` stored in a loaded checkpoint, to resume from."""
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


def _reason(e: Exception) -> str:
    """The gist of torch.load's error, in one short line."""
    text = " ".join(str(e).split())
    if "WeightsUnpickler error: " in text:  # after a paragraph about torch 2.6's defaults
        text = text.split("WeightsUnpickler error: ", 1)[1]
    text = text.split(" Check the documentation", 1)[0].split(". ", 1)[0]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing anything stored in it."""
    path = Path(path)
    if not path.is_file():
        raise PyroVAEError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function to import and call
            raise PyroVAEError(
                f"{path} holds objects other than tensors and plain data; refusing to load it, "
                "since unpickling them could run code"
            ) from None
        raise PyroVAEError(f"{path} is not a readable checkpoint (corrupt: {_reason(e)})") from None
    except Exception as e:  # garbage bytes fail anywhere in torch.load, with any exception type
        raise PyroVAEError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {_reason(e)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PyroVAEError(f"{path} is not a pyro-vae checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_weights(vae: VAE, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Put a loaded checkpoint's weights into ``vae``, or say in one line why they do not fit."""
    try:
        vae.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, AttributeError) as e:  # no weights, or not a dict of them
        raise PyroVAEError(f"{path} lacks part of its contents ({e})") from None
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        if len(reason) > 300:
            reason = reason[:300] + " ..."
        raise PyroVAEError(
            f"the weights in {path} do not fit the model of its config ({reason})"
        ) from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """The trained VAE of a run folder, on ``device``, and its checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PyroVAEError(f"no run folder at {run_dir}")
    path = run_dir / CHECKPOINT_NAME
    state = load_checkpoint(path, map_location=device)
    try:
        vae = VAE(**state["config"]["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PyroVAEError(f"{path} lacks part of its config or holds a bad value ({e})") from None
    load_weights(vae, state, path)
    return vae.to(device), state
