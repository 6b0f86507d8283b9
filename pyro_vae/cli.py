"""The ``pyro-vae`` command line: train, evaluate, check-elbo, sample, reconstruct and list.

Every mistake a user can make is reported as one line, ``pyro-vae: error: ...``, with exit
status 2; nothing the user asked for is lost to a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pyro
import torch
from matplotlib.backend_bases import FigureCanvasBase

from . import __version__, distributed
from .check import check_elbo, format_check
from .checkpoint import (
    CHECKPOINT_NAME,
    atomic_write,
    load_checkpoint,
    load_run,
    load_weights,
    save_checkpoint,
    train_state,
    versions,
    write_json,
)
from .data import DATASETS, load_dataset
from .elbo import OBJECTIVES
from .errors import ConfigError, PyroVAEError
from .evaluate import evaluate, evaluate_run, load_run_data, run_setting
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .model import VAE
from .nets import NETS
from .plots import plot_elbo, plot_reconstructions, plot_samples
from .priors import PRIORS
from .registry import describe, option_names
from .train import (
    BINARIZATION,
    History,
    TrainingInterrupted,
    TrainState,
    eval_inputs,
    resolve_device,
    train,
)

RUN_FILES = (
    "config.json",
    "metrics.csv",
    "summary.json",
    CHECKPOINT_NAME,
    "reconstructions.png",
    "samples.png",
    "elbo.png",
)


# Counts and sizes past a signed 64-bit integer overflow inside torch; no run needs them.
MAX_INT = 2**63 - 1
# Larger numbers overflow float32 arithmetic (Adam's first step divides the learning rate by 0.1).
MAX_FLOAT = 1e30
MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds numpy too, which takes 0 to 2**32 - 1
MAX_IMAGES = 100_000  # pyro-vae sample -n: all of them go into one picture
MAX_PARTICLES = 1000  # pyro-vae check-elbo --num-particles: memory grows with them


def whole_number(text: str, low: int = 1, high: int = MAX_INT) -> int:
    """``text`` as an int in [low, high], or an argparse error saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if value > high:
        digits = str(value)
        shown = digits if len(digits) <= 40 else f"a number of {len(digits)} digits"
        raise argparse.ArgumentTypeError(f"must be at most {high}, got {shown}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    return whole_number(text, 0)


def seed_int(text: str) -> int:
    return whole_number(text, 0, MAX_SEED)


def image_count(text: str) -> int:
    return whole_number(text, 1, MAX_IMAGES)


def particle_count(text: str) -> int:
    return whole_number(text, 1, MAX_PARTICLES)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value:g}")
    if value > MAX_FLOAT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_FLOAT:g}, got {value:g}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive sizes such as 400 or 512,256 ({e})"
        ) from None


def _metrics_csv(history: History) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", "train_elbo", "test_elbo", "seconds"])
    writer.writeheader()
    writer.writerows(history.rows())
    return buffer.getvalue().encode()


def _write_pictures(vae: VAE, x_test: Any, run_dir: Path, history: History) -> None:
    plot_reconstructions(x_test[:32], vae.reconstruct(x_test[:32]), run_dir / "reconstructions.png")
    plot_samples(vae.sample(64), run_dir / "samples.png")
    plot_elbo(history.__dict__, run_dir / "elbo.png")


class StopOnSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM ask training to stop after the current step;
    a second SIGINT stops at once (the last checkpoint on disk is kept)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce

    def __enter__(self) -> StopOnSignals:
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(
                f"\npyro-vae: {signal.Signals(signum).name} received: finishing the current step "
                "and writing a checkpoint (Ctrl-C again stops at once)",
                file=sys.stderr,
            )

    def requested(self) -> bool:
        return self.signum is not None


# Settings a resumed run may change; any other difference from the saved run is an error.
RESUMABLE_CHANGES = ("epochs", "lr")


def _resume_args(args: argparse.Namespace) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The saved run's command with this command's flags on top, and the saved checkpoint."""
    if args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; choose one")
    if args.out is None:
        raise ConfigError("--resume needs --out, the run folder to continue")
    checkpoint = load_checkpoint(Path(args.out) / CHECKPOINT_NAME)
    command = checkpoint["config"].get("command")
    if not command or command[:2] != ["pyro-vae", "train"]:
        raise ConfigError(
            f"{args.out} was not written by pyro-vae train, so it cannot be resumed from here"
        )
    saved = [a for a in command[1:] if a != "--overwrite"]
    merged = build_parser().parse_args(saved + args.argv[1:])
    merged.argv = saved + [a for a in args.argv[1:] if a != "--resume"]
    return merged, checkpoint


def _resume_mismatch(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """``key: saved -> asked`` for each setting that differs and may not change."""
    keys = [("dataset",), ("data_dir",), ("data_path",)]
    keys += [("model", k) for k in sorted(set(saved["model"]) | set(config["model"]))]
    keys += [
        ("train", k)
        for k in sorted(set(saved["train"]) | set(config["train"]))
        if k not in RESUMABLE_CHANGES
    ]
    differences = []
    for key in keys:
        old, new = saved, config
        for k in key:
            old, new = old.get(k), new.get(k)
        if old != new:
            differences.append(f"{'.'.join(key)}: {old!r} -> {new!r}")
    return differences


def cmd_train(args: argparse.Namespace) -> int:
    saved = None
    if args.resume:
        args, saved = _resume_args(args)
    device = resolve_device(args.device)
    if distributed.launched_by_torchrun():
        device = distributed.init_from_env(device)
    writer = distributed.is_main_process()
    run_dir = Path(args.out or f"runs/{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if saved is None and (run_dir / CHECKPOINT_NAME).exists() and not args.overwrite:
        raise ConfigError(
            f"{run_dir} already holds a trained run; continue it with --resume, or choose "
            "another --out, or pass --overwrite"
        )
    data = load_dataset(args.dataset, data_dir=args.data_dir, data_path=args.data_path)
    pyro.set_rng_seed(args.seed)
    vae = _build_vae(args, data.x_shape)
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "objective": args.objective,
        "binarization": args.binarize,
    }
    config = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "data_path": args.data_path,
        "model": vae.config,
        "train": settings,
        "device": str(device),
        "versions": versions(),
        "command": ["pyro-vae", *args.argv],
    }
    resume = None
    if saved is not None:
        differences = _resume_mismatch(saved["config"], config)
        if differences:
            raise ConfigError(
                f"--resume: this command asks for other settings than the run in {run_dir} "
                f"({'; '.join(differences)}); only --epochs and --lr may change"
            )
        load_weights(vae, saved, run_dir / CHECKPOINT_NAME)
        resume = train_state(saved)
        if resume.epoch >= args.epochs:
            raise ConfigError(
                f"{run_dir} has finished {resume.epoch} of --epochs {args.epochs}; pass a "
                "larger --epochs to train on"
            )
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config)

    def save(state: TrainState) -> None:
        if writer:
            atomic_write(run_dir / "metrics.csv", lambda f: f.write(_metrics_csv(state.history)))
            save_checkpoint(run_dir / CHECKPOINT_NAME, vae, state, config=config)

    with StopOnSignals(announce=writer) as signals, warnings.catch_warnings():
        # a non-finite loss stops training with its own message (epoch, step, a hint)
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            history = train(
                vae,
                data,
                device=device,
                progress=not args.quiet,
                checkpoint=save,
                resume=resume,
                stop=signals.requested,
                **settings,
            )
        except TrainingInterrupted as stopped:
            signum = signals.signum or signal.SIGINT
            if writer:
                print(
                    f"pyro-vae: {signal.Signals(signum).name}: {stopped}; checkpoint written to "
                    f"{run_dir / CHECKPOINT_NAME}\n"
                    f"pyro-vae: resume with: pyro-vae train --out {run_dir} --resume",
                    file=sys.stderr,
                )
            return 128 + signum
    if not writer:
        return 0
    figures = evaluate(  # the IWAE estimate is pyro-vae evaluate's job: it can take minutes
        vae, data, seed=args.seed, objective=args.objective, binarization=args.binarize, iwae_k=0
    )
    summary = {
        "test_elbo": history.test_elbo[-1],
        "train_elbo": history.train_elbo[-1],
        "epochs": history.epoch[-1],
        "device": str(device),
        "train_seconds": sum(history.seconds),
        "baseline_log_likelihood": figures.get("baseline_log_likelihood"),
        "active_units": figures["active_units"],
        "num_train": len(data.x_train),
        "num_test": len(data.x_test),
    }
    write_json(run_dir / "summary.json", summary)
    _write_pictures(vae, data.x_test.to(device), run_dir, history)
    print(f"run folder: {run_dir}  ({', '.join(RUN_FILES)})")
    baseline = summary["baseline_log_likelihood"]
    against = "" if baseline is None else f" (independent-pixel baseline: {baseline:.2f})"
    print(f"test ELBO: {summary['test_elbo']:.2f} nats per example{against}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.run_dir,
        seed=args.seed,
        device=args.device,
        iwae_k=args.iwae_k,
        progress=not args.quiet,
    )
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
        print(f"{key}: {value}")
    print(f"wrote {Path(args.run_dir) / 'evaluation.json'}")
    return 0


def picture_path(out: str | None, default: Path) -> Path:
    """The picture file to write: ``--out`` or ``default``, checked before the work is done."""
    path = Path(out) if out else default
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name a file such as {path / default.name}")
    if path.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"--out {path}: a picture file needs one of the endings {', '.join(sorted(formats))}"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def save_picture(plot: Any, *args: Any, path: Path) -> None:
    """``plot(*args, path)``, with a failed write (permissions, a full disk) as one line."""
    try:
        plot(*args, path)
    except OSError as e:
        raise PyroVAEError(f"cannot write {path} ({e.strerror or e})") from None


def cmd_sample(args: argparse.Namespace) -> int:
    vae, _ = load_run(args.run_dir, device=resolve_device(args.device))
    out = picture_path(args.out, Path(args.run_dir) / "samples.png")
    pyro.set_rng_seed(args.seed)
    save_picture(plot_samples, vae.sample(args.num), path=out)
    print(f"wrote {args.num} samples to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    vae, state = load_run(args.run_dir, device=resolve_device(args.device))
    out = picture_path(args.out, Path(args.run_dir) / "reconstructions.png")
    data = load_run_data(args.run_dir, vae, state["config"])
    x = data.x_test[: args.num].to(next(vae.parameters()).device)
    save_picture(plot_reconstructions, x, vae.reconstruct(x), path=out)
    print(f"wrote {len(x)} test images and their reconstructions to {out}")
    return 0


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="data set: digits is embedded (8x8, offline); the MNIST family needs "
        "--data-dir or a network; npz needs --data-path",
    )
    p.add_argument(
        "--data-dir",
        help="folder with the MNIST-family IDX files, in torchvision's "
        "layout (DIR/MNIST/raw/...) or directly (default: data)",
    )
    p.add_argument(
        "--data-path",
        help="an .npz file with arrays x_train, x_test (values in "
        "[0,1]) and optional y_train, y_test, for --dataset npz",
    )


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--z-dim", type=positive_int, default=16, help="size of the latent code z")
    p.add_argument(
        "--hidden-dims",
        type=int_list,
        default=[400],
        help="comma-separated hidden sizes, encoder order: layer widths for mlp, "
        "channel counts for conv (e.g. 400 or 512,256)",
    )
    p.add_argument(
        "--encoder", choices=list(NETS), default="mlp", help="network family of encoder and decoder"
    )
    p.add_argument("--prior", choices=list(PRIORS), default="standard-normal", help="prior p(z)")
    p.add_argument(
        "--likelihood", choices=list(LIKELIHOODS), default="bernoulli", help="likelihood p(x|z)"
    )
    p.add_argument("--guide", choices=list(GUIDES), default="diagonal", help="guide family q(z|x)")
    p.add_argument(
        "--prior-components", type=positive_int, help="mixture components of the mog/vamp prior"
    )
    p.add_argument("--prior-df", type=positive_float, help="degrees of freedom of student-t")
    p.add_argument("--likelihood-scale", type=positive_float, help="scale of the gaussian")
    p.add_argument(
        "--likelihood-min-scale",
        type=positive_float,
        help="floor of the learned scale of gaussian-learned and laplace",
    )
    p.add_argument(
        "--likelihood-bins",
        type=positive_int,
        help="grey levels of discretized-logistic (256 for 8-bit images, 17 for digits)",
    )
    p.add_argument(
        "--flow-steps", type=positive_int, help="flow steps of the flow prior and the iaf guide"
    )


def _add_binarize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--binarize",
        choices=BINARIZATION,
        default="dynamic",
        help="dynamic: for a binary likelihood, binarize grey training data afresh in "
        "each batch and the test set once with a fixed seed; none: use data as is",
    )


# Option flags of the swappable parts: flag -> (the kinds of part it may configure, option name).
# A flag reaches every chosen part that takes that option, and is an error if none does.
PART_OPTION_FLAGS = {
    "--prior-components": (("prior",), "components"),
    "--prior-df": (("prior",), "df"),
    "--likelihood-scale": (("likelihood",), "scale"),
    "--likelihood-min-scale": (("likelihood",), "min_scale"),
    "--likelihood-bins": (("likelihood",), "bins"),
    "--flow-steps": (("prior", "guide"), "flow_steps"),
}
REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}


def part_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``{"prior_options": {...}, ...}`` from the option flags the user gave."""
    options: dict[str, dict[str, Any]] = {kind: {} for kind in REGISTRIES}
    for flag, (kinds, option) in PART_OPTION_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        chosen = {kind: getattr(args, kind) for kind in kinds}
        takers = [k for k, name in chosen.items() if option in option_names(REGISTRIES[k][name])]
        if not takers:
            names = " and ".join(f"the {kind} {name!r}" for kind, name in chosen.items())
            raise ConfigError(f"{flag} does not apply to {names}; see pyro-vae list")
        for kind in takers:
            options[kind][option] = value
    return {f"{kind}_options": values for kind, values in options.items()}


def _build_vae(args: argparse.Namespace, x_shape: Sequence[int]) -> VAE:
    return VAE(
        x_shape,
        z_dim=args.z_dim,
        hidden_dims=args.hidden_dims,
        encoder=args.encoder,
        prior=args.prior,
        likelihood=args.likelihood,
        guide=args.guide,
        **part_options(args),
    )


def cmd_list(args: argparse.Namespace) -> int:
    for kind, registry in REGISTRIES.items():
        print(f"{kind}s (--{kind}):")
        for name, options, description in describe(registry):
            print(f"  {name:<22}{description}" + (f"  [{options}]" if options else ""))
    return 0


def cmd_check_elbo(args: argparse.Namespace) -> int:
    if args.run_dir is not None:
        vae, state = load_run(args.run_dir)
        data = load_run_data(args.run_dir, vae, state["config"])
        binarization = run_setting(state["config"], "train", "binarization")
    else:
        data = load_dataset(args.dataset, data_dir=args.data_dir, data_path=args.data_path)
        pyro.set_rng_seed(args.seed)
        vae = _build_vae(args, data.x_shape)
        binarization = args.binarize
    x = eval_inputs(vae, data.x_test[: args.batch_size], binarization)
    report = check_elbo(vae, x, seed=args.seed, num_particles=args.num_particles)
    print(format_check(report, len(x)))
    if report.failures:
        print(f"pyro-vae: check failed: {report.failures[0]}", file=sys.stderr)
        return 1
    print("all equalities hold")
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with each mistake reported in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders written as Pyro programs."
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = commands.add_parser("train", help="train a VAE and write a run folder", formatter_class=fmt)
    _add_data_flags(p)
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int, default=128, help="examples per SVI step")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    _add_model_flags(p)
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default="trace",
        help="trace: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL); manual: the "
        "hand-written ELBO in plain PyTorch, no pyro.infer",
    )
    _add_binarize_flag(p)
    p.add_argument("--seed", type=seed_int, default=0, help="seeds weights, batch order and noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", help="run folder to write (default: runs/DATASET-DATE-TIME)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out instead of stopping",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, exactly as if it had not "
        "stopped; its settings are kept (only --epochs and --lr may change)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser(
        "evaluate", formatter_class=fmt, help="test ELBO of a run; writes RUN_DIR/evaluation.json"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    p.add_argument(
        "--seed", type=seed_int, help="seed of the Monte Carlo estimate (default: the run's)"
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's, else cpu)")
    p.add_argument(
        "--iwae-k",
        type=nonnegative_int,
        default=1000,
        help="particles of the importance-weighted log-likelihood estimate (5000 is the figure "
        "papers report; 0 skips it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "list", help="the registered priors, likelihoods and guides", formatter_class=fmt
    )
    p.set_defaults(func=cmd_list)

    p = commands.add_parser(
        "check-elbo",
        formatter_class=fmt,
        help="compare Pyro's Trace_ELBO with the hand-written ELBO; exit 1 if they differ",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", nargs="?", help="a trained run (default: an untrained model)"
    )
    _add_data_flags(p)
    _add_model_flags(p)
    _add_binarize_flag(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="test examples compared")
    p.add_argument(
        "--num-particles",
        type=particle_count,
        default=1,
        help=f"Monte Carlo particles per example (at most {MAX_PARTICLES})",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the model and of the draws")
    p.set_defaults(func=cmd_check_elbo)

    p = commands.add_parser("sample", help="draw images from a trained model", formatter_class=fmt)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    p.add_argument(
        "-n", "--num", type=image_count, default=64, help=f"number of images (at most {MAX_IMAGES})"
    )
    p.add_argument("--out", help="PNG file to write (default: RUN_DIR/samples.png)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the draws")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser(
        "reconstruct", formatter_class=fmt, help="reconstruct test images with a trained model"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    p.add_argument("-n", "--num", type=positive_int, default=32, help="number of test images")
    p.add_argument("--out", help="PNG file to write (default: RUN_DIR/reconstructions.png)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_reconstruct)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    try:
        return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npyro-vae: interrupted; a run folder keeps its last checkpoint", file=sys.stderr)
        return 130
    finally:
        if distributed.launched_by_torchrun() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
