"""``pyro-vae check-elbo`` (Pyro's objectives against the hand-written ones) and ``pyro-vae
list`` (the models and the registered parts)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from functools import partial
from typing import Any

from pyro_vae import validation
from pyro_vae.cli.flags import add_settings, given, real, whole
from pyro_vae.config import PART_OPTIONS, PARTS, DataConfig, ModelConfig, RunConfig
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.elbo_check import format_check
from pyro_vae.models import MODELS
from pyro_vae.parts.registry import describe
from pyro_vae.runs.folder import Run, new_model

PARTICLES = partial(validation.whole, high=validation.MAX_PARTICLES)


def add_parsers(commands: Any) -> None:
    """list and check-elbo."""
    p = commands.add_parser(
        "list", help="the models and the registered priors, likelihoods and guides"
    )
    p.set_defaults(func=cmd_list)
    _add_check_elbo(commands)


def cmd_list(args: argparse.Namespace) -> int:
    print("models (--model):")
    for name, cls in MODELS.items():
        print(f"  {name:<22}{cls.description}")
    for kind, registry in PARTS.items():
        print(f"{kind}s (--{kind}):")
        for name, options, description in describe(registry):
            print(f"  {name:<22}{description}" + (f"  [{options}]" if options else ""))
    return 0


def _add_check_elbo(commands: Any) -> None:
    p = commands.add_parser(
        "check-elbo",
        help="compare Pyro's Trace_ELBO with the hand-written ELBO; exit 1 if they differ",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="?",
        help="a trained run (default: an untrained model of the flags below)",
    )
    names = [f.name for section in (DataConfig, ModelConfig) for f in dataclasses.fields(section)]
    add_settings(p, [*names, "binarization", *PART_OPTIONS])
    p.add_argument("--batch-size", type=whole(validation.count, "batch_size"), default=64,
                   help="test examples compared")  # fmt: skip
    p.add_argument("--num-particles", type=whole(PARTICLES, "num_particles"), default=1,
                   help="Monte Carlo particles per example")  # fmt: skip
    p.add_argument(
        "--kl-weight",
        default=0.5,
        type=real(validation.positive, "kl_weight"),
        help="the KL weight (a beta, or a warm-up's weight) of the weighed rows",
    )
    p.add_argument("--iwae-particles", type=whole(PARTICLES, "iwae_particles"), default=5,
                   help="particles of the IWAE and DReG rows")  # fmt: skip
    p.add_argument("--seed", type=whole(validation.seed, "seed"), default=0,
                   help="seed of the model and of the draws")  # fmt: skip
    p.set_defaults(func=cmd_check_elbo)


def cmd_check_elbo(args: argparse.Namespace) -> int:
    if args.run_dir is not None:
        run = Run.open(args.run_dir)
        vae, data, config = run.vae, run.data, run.config
    else:
        config = RunConfig().replace(**given(args))
        data = config.data.load()
        vae = new_model(config.model, data, args.seed)
    x = eval_inputs(vae.likelihood, data.x_test[: args.batch_size], config.training.binarization)
    vae.check_data(data)
    labels = None if data.y_test is None else data.y_test[: args.batch_size]
    report = vae.check_elbo(
        x,
        labels,
        seed=args.seed,
        num_particles=args.num_particles,
        kl_weight=args.kl_weight,
        iwae_particles=args.iwae_particles,
    )
    print(format_check(report, len(x)))
    if report.failures:
        print(f"pyro-vae: check failed: {report.failures[0]}", file=sys.stderr)
        return 1
    print("all equalities hold")
    return 0
