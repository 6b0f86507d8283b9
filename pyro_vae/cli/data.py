"""The commands on a trained run and a split of its data, or of other data of the same shape:
encode and score."""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from typing import Any

from pyro_vae import validation
from pyro_vae.analysis.codes import encode, save_codes
from pyro_vae.analysis.evaluation import AUTO, choose_iwae_k
from pyro_vae.analysis.plots import plot_typical
from pyro_vae.analysis.scores import COLUMNS, most_and_least_typical, score, write_scores
from pyro_vae.cli.flags import add_settings, given, whole
from pyro_vae.cli.outputs import output_path, picture_path, write_output
from pyro_vae.cli.runs import AUTO_K_HELP, iwae_k_type
from pyro_vae.config import DataConfig
from pyro_vae.data.sources import Dataset
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import CODES, EVALUATION, SCORES, SPLITS, TYPICAL

TYPICAL_SHOWN = 8  # examples in each row of score's picture


def add_parsers(commands: Any) -> None:
    """encode and score."""
    _add_encode(commands)
    _add_score(commands)


def _add_data_command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command on a trained run and a split of its data, or of other data of the same shape:
    encode and score. Its own flags follow these."""
    p = commands.add_parser(name, **kwargs)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    group = p.add_argument_group("data (default: the run's own)")
    add_settings(p, [f.name for f in dataclasses.fields(DataConfig)], False, group)
    p.add_argument(
        "--split", choices=SPLITS, default="test", help="the split of the data (default: test)"
    )
    p.add_argument(
        "--seed",
        type=whole(validation.seed, "seed"),
        help="seed of the Monte Carlo draws (default: the run's)",
    )
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _data_of(run: Run, args: argparse.Namespace) -> tuple[Dataset, bool]:
    """The data the data flags name on top of the run's own data settings, and whether they are
    the run's own."""
    config = run.config.replace(**given(args))
    return run.data_of(config), run.same_data(config)


def _add_encode(commands: Any) -> None:
    p = _add_data_command(
        commands,
        "encode",
        help="the guide's codes (posterior means and scales) of a data set, into an .npz; "
        "a linear probe's accuracy where there are labels",
        description="Write each example's code, E_q[z|x] and the standard deviations of "
        "q(z|x), and its label, to an .npz. With labels, fit a logistic regression on the "
        "training split's codes and report its test accuracy (written to "
        "RUN_DIR/evaluation.json for the run's own data).",
    )
    p.add_argument("--out", help="the .npz file to write (default: RUN_DIR/codes.npz)")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = output_path(args.out, run.path / CODES, ["npz"], "a NumPy archive")
    data, own = _data_of(run, args)
    seed = run.config.training.seed if args.seed is None else args.seed
    x, labels = run.inputs(args.split, data)
    codes = encode(run.vae, x, labels, seed=seed, progress=not args.quiet)
    write_output(save_codes, codes, path=out)
    shape = "x".join(map(str, codes.mean.shape))
    also = ", labels" if labels is not None else ""
    print(f"wrote the codes of {len(x)} {args.split} examples to {out} (mean, scale {shape}{also})")
    if args.no_probe or data.y_train is None or data.y_test is None:
        return 0
    probe = run.linear_probe(data, progress=not args.quiet)
    print(
        f"linear probe (logistic regression on the posterior means): test accuracy "
        f"{probe.accuracy:.4f} (always the most common label: {probe.chance:.4f})"
    )
    if own:
        print(f"wrote {run.path / EVALUATION}")
    return 0


def _add_score(commands: Any) -> None:
    p = _add_data_command(
        commands,
        "score",
        help="per-example log p(x), ELBO and complexity-corrected scores, into a CSV; a "
        "picture of the most and least typical examples",
        description="Score each example: its IWAE estimate of log p(x), a one-sample ELBO, "
        "bits per dimension and, for discrete likelihoods, the input-complexity corrected "
        "score log2 p(x) + L(x) (Serra et al. 2020). Higher means more typical. Score another "
        "data set of the same shape with the data flags, for out-of-distribution detection.",
    )
    p.add_argument(
        "--iwae-k",
        type=iwae_k_type(low=1),
        default=AUTO,
        help=f"particles of each example's IWAE estimate of log p(x): {AUTO_K_HELP}",
    )
    p.add_argument("--out", help="the CSV file to write (default: RUN_DIR/scores.csv)")
    p.add_argument(
        "--picture",
        help="picture of the most and least typical examples (default: RUN_DIR/typical.png)",
    )
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = output_path(args.out, run.path / SCORES, ["csv"], "a CSV file")
    picture = picture_path(args.picture, run.path / TYPICAL, "--picture")
    data, _ = _data_of(run, args)
    seed = run.config.training.seed if args.seed is None else args.seed
    x, labels = run.inputs(args.split, data)
    scores = score(run.vae, x, args.iwae_k, labels=labels, seed=seed, progress=not args.quiet)
    write_output(partial(write_scores, labels=labels), scores, path=out)
    most, least = most_and_least_typical(scores["log_px"], TYPICAL_SHOWN)
    write_output(plot_typical, x[most], x[least], path=picture)
    k, _ = choose_iwae_k(run.vae, x, args.iwae_k, labels=labels)  # score's k: the choice repeats
    print(f"scored {len(x)} {args.split} examples of {data.name} (IWAE k={k}); means:")
    for name, values in scores.items():
        print(f"  {name:<16}{float(values.mean()):12.4f}   {COLUMNS[name]}")
    print(f"wrote {out} and the most and least typical examples to {picture}")
    return 0
