"""Devices: which one a name means, and whether a number of bytes fits in its memory."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

from pyro_vae.errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    :param spec: the device's name (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, any case) or
        a :class:`torch.device`.
    """
    name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"{str(spec)!r} is not a device; choose {DEVICE_NAMES}", "device")
    if not torch.cuda.is_available():
        raise ConfigError(f"{name}: no CUDA GPU is available here; use cpu or auto", "device")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch.device's only error: a malformed name such as cuda:x
        raise ConfigError(f"{name} is not a device name; use cuda or cuda:N", "device") from None
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"{name}: only {count} CUDA device(s) are present", "device")
    return device


def random_state_kept(device: torch.device) -> AbstractContextManager[None]:
    """Inside, torch's global random state (and ``device``'s, for a GPU) may be reseeded and
    drawn from; afterwards it is as it was before.

    :param device: the device in use; for a GPU, its generator is kept too.
    """
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def memory_bytes(device: torch.device) -> int:
    """The memory of ``device``: the machine's RAM for the CPU, the card's for a GPU.

    :param device: the CPU or a CUDA device.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(needed: int, device: torch.device, what: str, param: str | None = None) -> None:
    """Raise :class:`ConfigError` (naming ``param``, if given) when ``needed`` bytes of ``what``
    exceed ``device``'s memory: asked before allocating, since on the CPU torch reports a failed
    allocation as a bare ``RuntimeError``.

    :param needed: the bytes needed.
    :param device: the device they are needed on.
    :param what: what needs them, for the message ("the weights, Adam's state and the data").
    :param param: the setting to name as the one at fault, if one is.
    """
    available = memory_bytes(device)
    if needed > available:
        raise ConfigError(
            f"{what} need {needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB "
            f"of memory of {'this machine' if device.type == 'cpu' else device}",
            param,
        )


def check_numbers_fit(count: int, what: str, param: str | None = None) -> None:
    """:func:`check_fits` for ``count`` numbers of the default dtype, on the CPU, where parts and
    networks are built.

    :param count: the numbers needed.
    :param what: what they are, for the message.
    :param param: the setting to name as the one at fault, if one is.
    """
    check_fits(count * torch.get_default_dtype().itemsize, torch.device("cpu"), what, param)
