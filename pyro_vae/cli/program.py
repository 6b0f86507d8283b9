"""The ``pyro-vae`` command line: train, evaluate, check-elbo, sample, reconstruct, encode, score,
interpolate, classify and list.

It parses flags and calls the library. The flags of the settings are made from
:mod:`pyro_vae.config`'s fields (:mod:`pyro_vae.cli.flags`); the library's errors name parameters
(``z_dim``), and are printed here with the flags (``--z-dim``). Every mistake a user can make is
one line, ``pyro-vae: error: ...``, with exit status 2; nothing the user asked for is lost to a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

import torch

from pyro_vae.cli import check, data, prepare, runs, train
from pyro_vae.cli.flags import speller
from pyro_vae.cli.parser import ArgumentParser, HelpFormatter
from pyro_vae.errors import PyroVAEError, StaleDataWarning
from pyro_vae.training import distributed
from pyro_vae.version import __version__

# Each command's --help ends with these command lines.
EXAMPLES = {
    "train": [
        "pyro-vae train --dataset digits --epochs 50 --out runs/digits",
        "pyro-vae train --dataset fashion-mnist --data-dir data --encoder conv "
        "--likelihood discretized-logistic --likelihood-bins 256 --out runs/fmnist",
        "pyro-vae train --dataset digits --epochs 50 --out runs/watched --tensorboard",
    ],
    "evaluate": ["pyro-vae evaluate runs/digits --iwae-k 5000"],
    "sample": ["pyro-vae sample runs/digits -n 64 --out samples.png"],
    "reconstruct": ["pyro-vae reconstruct runs/digits -n 16 --out recon.png"],
    "encode": [
        "pyro-vae encode runs/digits --out codes.npz",
        "pyro-vae encode runs/fmnist --dataset npz --data-path mnist.npz --no-probe",
    ],
    "score": [
        "pyro-vae score runs/digits --iwae-k 1000",
        "pyro-vae score runs/fmnist --dataset npz --data-path mnist.npz --out mnist.csv",
    ],
    "interpolate": ["pyro-vae interpolate runs/digits --from 0 --to 1 --path spherical"],
    "classify": ["pyro-vae classify runs/m2 --out confusion.png"],
    "list": ["pyro-vae list"],
    "prepare": [
        "pyro-vae prepare --dataset folder --data-dir pictures --image-size 64 --out prepared/pics",
        "pyro-vae prepare --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist "
        "--out prepared/fmnist",
    ],
    "check-elbo": [
        "pyro-vae check-elbo runs/digits",
        "pyro-vae check-elbo --prior vamp --guide iaf",
    ],
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, each command's ``func`` the function that runs it."""
    parser = ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders written as Pyro programs."
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(commands)
    runs.add_parsers(commands)
    data.add_parsers(commands)
    prepare.add_parsers(commands)
    check.add_parsers(commands)
    for name, command in commands.choices.items():
        command.formatter_class = HelpFormatter
        command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    :param argv: the arguments after the program's name, e.g. ``["train", "--epochs", "5"]``;
        ``None``: ``sys.argv[1:]``.
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e.worded(speller(parser))}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:  # a GPU's, outside training (which says which flags to lower)
        print("pyro-vae: error: the GPU ran out of memory; try --device cpu", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npyro-vae: interrupted; a run folder keeps its last checkpoint", file=sys.stderr)
        return 130
    finally:
        if distributed.launched_by_torchrun() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


_python_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Ours as one line, ``pyro-vae: warning: ...``, from rank 0 alone under torchrun (its
    ``RANK`` too: data are loaded before the processes join their group); anyone else's as Python
    shows it."""
    if issubclass(category, StaleDataWarning):
        if distributed.is_main_process() and os.environ.get("RANK", "0") == "0":
            print(f"pyro-vae: warning: {message}", file=sys.stderr)
    else:
        _python_warning(message, category, filename, lineno, file, line)
