"""``pyro-vae train``: a new run folder (:meth:`Run.create <pyro_vae.runs.folder.Run.create>`),
or one trained on (:meth:`Run.resume <pyro_vae.runs.folder.Run.resume>`)."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from typing import Any

from pyro_vae.cli.flags import add_settings, flag_for, given
from pyro_vae.config import FIELDS, PART_OPTIONS, RESUMABLE, RunConfig
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError
from pyro_vae.runs.folder import Run, RunExists
from pyro_vae.runs.layout import CHECKPOINT, default_path
from pyro_vae.training import distributed
from pyro_vae.training.signals import StopOnSignals
from pyro_vae.training.trainer import TrainingInterrupted


def add_parser(commands: Any) -> None:
    """The ``train`` command: a flag for every setting, and where the run goes."""
    p = commands.add_parser("train", help="train a VAE and write a run folder")
    p.add_argument(
        "--config",
        help="a config file (JSON, such as a run's config.json, or TOML) "
        "whose settings this command's flags override",
    )
    add_settings(p, [*FIELDS, *PART_OPTIONS])
    p.add_argument("--out", help="run folder to write (default: runs/DATASET-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    resumable = [flag_for(name) for name in RESUMABLE]
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, exactly as if it had not "
        f"stopped; its settings are kept (only {', '.join(resumable[:-1])} and {resumable[-1]} "
        "may change)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    run = _resumed(args) if args.resume else None
    if run is None:
        base = RunConfig.load(args.config) if args.config else RunConfig()
        config = base.replace(**given(args))
    else:
        config = run.config
    if distributed.launched_by_torchrun():
        distributed.init_from_env(resolve_device(config.training.device))
    if run is None:
        run = _created(args, config)
    writer = distributed.is_main_process()
    with StopOnSignals(announce=writer) as signals, warnings.catch_warnings():
        # a non-finite loss stops training with its own message (epoch, step, a hint)
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            run.train(progress=not args.quiet, stop=signals.requested)
        except TrainingInterrupted as stopped:
            signum = signals.signum or signal.SIGINT
            if writer:
                print(
                    f"pyro-vae: {signal.Signals(signum).name}: {stopped}; checkpoint written to "
                    f"{run.path / CHECKPOINT}\n"
                    f"pyro-vae: resume with: pyro-vae train --out {run.path} --resume",
                    file=sys.stderr,
                )
            return 128 + signum
    if writer:
        _report(run)
    return 0


def _resumed(args: argparse.Namespace) -> Run:
    """The run in ``--out`` with this command's flags on top (:meth:`Run.resume`)."""
    for flag, asked in (("--overwrite", args.overwrite), ("--config", args.config)):
        if asked:
            raise ConfigError(
                f"--resume continues the run in --out as it is; {flag} does not go with it"
            )
    if args.out is None:
        raise ConfigError("--resume needs --out, the run folder to continue")
    return Run.resume(args.out, given(args))


def _created(args: argparse.Namespace, config: RunConfig) -> Run:
    """A new run of ``config`` in ``--out``, or in a new folder of its own."""
    out = args.out or default_path(config)
    try:
        return Run.create(out, config, overwrite=args.overwrite)
    except RunExists:
        raise ConfigError(
            f"{out} already holds a trained run; continue it with --resume, or choose "
            "another --out, or pass --overwrite"
        ) from None


def _report(run: Run) -> None:
    """Where the trained run's files are, and its figures."""
    print(f"run folder: {run.path}  ({', '.join(run.files())})")
    summary = run.summary
    baseline = summary["baseline_log_likelihood"]
    against = "" if baseline is None else f" (independent-pixel baseline: {baseline:.2f})"
    print(f"test ELBO: {summary['test_elbo']:.2f} nats per example{against}")
    if "test_bits_per_dim" in summary:
        baseline = summary.get("baseline_bits_per_dim")
        against = "" if baseline is None else f" (independent-pixel baseline: {baseline:.3f})"
        print(f"test bits per dimension: {summary['test_bits_per_dim']:.3f}{against}")
    if "test_accuracy" in summary:
        print(f"test accuracy: {summary['test_accuracy']:.4f}")
