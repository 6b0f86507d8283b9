"""``pyro-vae prepare``: a data set decoded once into a prepared copy, which ``--dataset
prepared --data-dir DIR`` then trains from, memory-mapped (:mod:`pyro_vae.data.prepare`)."""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from typing import Any

from pyro_vae import validation
from pyro_vae.cli.flags import add_settings, given, whole
from pyro_vae.config import DataConfig
from pyro_vae.data.images import DECODE_WORKERS
from pyro_vae.data.prepare import prepare_dataset
from pyro_vae.data.sources import load_dataset


def add_parsers(commands: Any) -> None:
    """prepare."""
    p = commands.add_parser(
        "prepare",
        help="decode a data set once into arrays on disk, to train from memory-mapped",
        description="Decode a data set once (pictures in parallel) into arrays on disk (8-bit "
        "images as uint8, other data as float32) with a JSON file describing them, in --out; "
        "train from it with --dataset prepared --data-dir OUT, which reads the rows of each "
        "batch alone, so the data may be larger than memory. An interrupted prepare goes on "
        "where it stopped when run again with the same flags; the folder appears only once it "
        "is whole.",
    )
    add_settings(p, [f.name for f in dataclasses.fields(DataConfig)])
    p.add_argument("--out", required=True, help="the folder to write the prepared copy into")
    p.add_argument(
        "--overwrite", action="store_true", help="replace what is at --out once the copy is done"
    )
    p.add_argument(
        "--workers",
        type=whole(partial(validation.whole, low=0), "workers"),
        default=DECODE_WORKERS,
        help=f"processes decoding pictures, 0: this one (default: {DECODE_WORKERS})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    config = DataConfig(**given(args))
    out = prepare_dataset(
        config.dataset, args.out, overwrite=args.overwrite, workers=args.workers,
        progress=not args.quiet, **config.options(),
    )  # fmt: skip
    print(f"prepared {load_dataset('prepared', data_dir=out).describe()}")
    print(f"wrote {out}; train from it with --dataset prepared --data-dir {out}")
    return 0
