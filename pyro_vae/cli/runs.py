"""The commands on a trained run folder: evaluate, sample, reconstruct, interpolate and
classify."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import pyro
import torch

from pyro_vae import validation
from pyro_vae.analysis.evaluation import AUTO, AUTO_K, AUTO_K_SECONDS, iwae_k_setting
from pyro_vae.analysis.plots import (
    plot_confusion,
    plot_interpolation,
    plot_reconstructions,
    plot_samples,
)
from pyro_vae.analysis.walks import PATHS, interpolate
from pyro_vae.cli.flags import typed, whole
from pyro_vae.cli.outputs import picture_path, write_output
from pyro_vae.config import COMPILE
from pyro_vae.errors import ConfigError
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import (
    CONFUSION,
    EVALUATION,
    interpolation_picture,
    reconstruct_picture,
    sample_picture,
)

RUN_DIR = {"metavar": "RUN_DIR", "help": "a folder written by pyro-vae train"}
DEVICE = "auto, cpu, cuda or cuda:N"
#: what --iwae-k auto does, in evaluate's and score's help
AUTO_K_HELP = (
    f"{AUTO} takes the largest of {', '.join(map(str, AUTO_K[:3]))}, ... whose pass is reckoned "
    f"to take at most {AUTO_K_SECONDS / 60:.0f} minutes on the device's type (from the model's "
    "size and the examples': the same k on every machine, e.g. 200 for an M2 on 10,000 images "
    "on a CPU) and says how long it will take"
)


def iwae_k_type(low: int) -> Callable[[str], int | str]:
    """An argparse type for ``--iwae-k``: ``auto``, or a whole number of at least ``low``.

    :param low: the smallest k allowed: 0 where it skips the estimate, else 1.
    """

    def parse(text: str) -> int | str:
        if text == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"expected {AUTO} or a whole number, got {text[:40]!r}") from None

    return typed(parse, partial(iwae_k_setting, low=low), "iwae_k")


def add_parsers(commands: Any) -> None:
    """evaluate, sample, reconstruct, interpolate and classify."""
    for add in (_add_evaluate, _add_sample, _add_reconstruct, _add_interpolate, _add_classify):
        add(commands)


def _add_evaluate(commands: Any) -> None:
    p = commands.add_parser("evaluate", help="test ELBO of a run; writes RUN_DIR/evaluation.json")
    p.add_argument("run_dir", **RUN_DIR)
    p.add_argument(
        "--seed",
        type=whole(validation.seed, "seed"),
        help="seed of the Monte Carlo estimate (default: the run's)",
    )
    p.add_argument("--device", help=f"{DEVICE} (default: the run's, else cpu)")
    p.add_argument(
        "--iwae-k",
        type=iwae_k_type(low=0),
        default=AUTO,
        help=f"particles of the importance-weighted log-likelihood estimate: {AUTO_K_HELP}; "
        "5000 is the figure papers report; 0 skips it",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE,
        help="compile the IWAE bound's chunks: on, off, or auto (when the chunks ahead repay "
        "the compile time); default: the run's --compile",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no line on the time")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir)
    result = run.evaluate(
        seed=args.seed,
        device=args.device,
        iwae_k=args.iwae_k,
        progress=not args.quiet,
        compile=args.compile,
    )
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
        print(f"{key}: {value}")
    print(f"wrote {run.path / EVALUATION}")
    return 0


def _add_sample(commands: Any) -> None:
    p = commands.add_parser("sample", help="draw images from a trained model")
    p.add_argument("run_dir", **RUN_DIR)
    p.add_argument(
        "-n",
        "--num",
        default=64,
        help=f"number of images (at most {validation.MAX_IMAGES})",
        type=whole(partial(validation.whole, high=validation.MAX_IMAGES), "num"),
    )
    p.add_argument(
        "--label",
        type=whole(partial(validation.whole, low=0), "label"),
        help="cvae, m2: draw images of this class only; without it, the classes in turn",
    )
    p.add_argument(
        "--out",
        help="PNG file to write (default: RUN_DIR/sample-seedS-nN.png, or "
        "sample-classK-seedS-nN.png: training's samples.png is kept)",
    )
    p.add_argument("--seed", type=whole(validation.seed, "seed"), default=0,
                   help="seed of the draws")  # fmt: skip
    p.add_argument("--device", default="cpu", help=DEVICE)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / sample_picture(args.seed, args.num, args.label))
    pyro.set_rng_seed(args.seed)
    write_output(plot_samples, run.vae.sample(args.num, label=args.label), path=out)
    of = "" if args.label is None else f" of class {args.label}"
    print(f"wrote {args.num} samples{of} to {out}")
    return 0


def _add_reconstruct(commands: Any) -> None:
    p = commands.add_parser("reconstruct", help="reconstruct test images with a trained model")
    p.add_argument("run_dir", **RUN_DIR)
    p.add_argument(
        "-n",
        "--num",
        type=whole(validation.count, "num"),
        default=32,
        help="number of test images, spread evenly over the test set",
    )
    p.add_argument(
        "--out",
        help="PNG file to write (default: RUN_DIR/reconstruct-nN.png: training's "
        "reconstructions.png is kept)",
    )
    p.add_argument("--device", default="cpu", help=DEVICE)
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / reconstruct_picture(args.num))
    x, reconstructions = run.reconstructions(args.num, args.device)
    write_output(plot_reconstructions, x, reconstructions, path=out)
    print(f"wrote {len(x)} test images and their reconstructions to {out}")
    return 0


def _add_interpolate(commands: Any) -> None:
    p = commands.add_parser(
        "interpolate",
        help="a picture of the images decoded between the codes of two test examples",
    )
    p.add_argument("run_dir", **RUN_DIR)
    index = whole(partial(validation.whole, low=0), "index")
    p.add_argument("--from", dest="from_index", type=index, required=True, metavar="I",
                   help="the test example to start from")  # fmt: skip
    p.add_argument("--to", dest="to_index", type=index, required=True, metavar="J",
                   help="the test example to end at")  # fmt: skip
    p.add_argument(
        "--steps",
        type=whole(partial(validation.whole, low=2, high=validation.MAX_IMAGES), "steps"),
        default=10,
        help="images along the path, its ends included (default: 10)",
    )
    p.add_argument(
        "--path",
        choices=list(PATHS),
        default="linear",
        help="linear: a straight line between the codes; spherical: the great circle, which "
        "keeps the codes' norms typical for a Gaussian prior (default: linear)",
    )
    p.add_argument("--out", help="PNG file to write (default: RUN_DIR/interpolation-I-J.png)")
    p.add_argument("--device", default="cpu", help=f"{DEVICE} (default: cpu)")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / interpolation_picture(args.from_index, args.to_index))
    size = len(run.data.x_test)
    ends = [validation.index(p, getattr(args, p), size) for p in ("from_index", "to_index")]
    x = run.test_images(torch.tensor(ends), args.device)
    images = interpolate(run.vae, x[0], x[1], args.steps, args.path)
    title = f"test example {ends[0]} to {ends[1]}, {args.path} path"
    write_output(partial(plot_interpolation, title=title), images, path=out)
    print(f"wrote {args.steps} images from test example {ends[0]} to {ends[1]} to {out}")
    return 0


def _add_classify(commands: Any) -> None:
    p = commands.add_parser(
        "classify",
        help="test accuracy of an m2 run's classifier; writes a confusion-matrix picture",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train --model m2"
    )
    p.add_argument("--out", help="PNG file to write (default: RUN_DIR/confusion.png)")
    p.add_argument("--device", default="cpu", help=DEVICE)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / CONFUSION)
    result = run.classify(args.device)
    accuracy, n = result["test_accuracy"], len(run.data.x_test)
    title = f"{run.path.name}: test accuracy {accuracy:.4f} ({n} images)"
    write_output(plot_confusion, result["confusion"], title, path=out)
    print(f"test accuracy: {accuracy:.4f} ({n} test images)")
    print(f"wrote the confusion matrix to {out}")
    return 0
