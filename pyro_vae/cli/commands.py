"""The ``pyro-vae`` command line: train, evaluate, check-elbo, sample, reconstruct, encode, score,
interpolate, classify and list.

It parses flags and calls the library. Flags map onto :class:`~pyro_vae.config.RunConfig`'s
fields; the library's errors name parameters (``z_dim``), and are printed here with the flags
(``--z-dim``). Every mistake a user can make is one line, ``pyro-vae: error: ...``, with exit
status 2; nothing the user asked for is lost to a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import pyro
import torch
from matplotlib.backend_bases import FigureCanvasBase

from pyro_vae import validation
from pyro_vae.analysis.codes import encode, save_codes
from pyro_vae.analysis.plots import (
    plot_confusion,
    plot_interpolation,
    plot_reconstructions,
    plot_samples,
    plot_typical,
)
from pyro_vae.analysis.scores import COLUMNS, most_and_least_typical, score, write_scores
from pyro_vae.analysis.walks import PATHS, interpolate
from pyro_vae.config import RESUMABLE, RunConfig
from pyro_vae.data.sources import (
    BINARIZATION,
    DATASETS,
    Dataset,
    eval_inputs,
    load_dataset,
)
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.compiling import COMPILE
from pyro_vae.infer.elbo import OBJECTIVES
from pyro_vae.infer.elbo_check import format_check
from pyro_vae.models import MODELS, build_model
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.networks import NETS
from pyro_vae.parts.priors import PRIORS
from pyro_vae.parts.registry import describe, option_defaults, option_names
from pyro_vae.runs.folder import (
    BOARD,
    CHECKPOINT,
    CLASS_PICTURE,
    EVALUATION,
    RUN_FILES,
    SPLITS,
    Run,
    RunExists,
)
from pyro_vae.training import distributed
from pyro_vae.training.signals import StopOnSignals
from pyro_vae.training.state import TrainingInterrupted
from pyro_vae.version import __version__

REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}

# ----------------------------------------------------------------------------------------------
# Flag values: parsed here, checked by pyro_vae.validation.


def whole(check: Callable[[str, Any], int], param: str) -> Callable[[str], int]:
    """An argparse type: a whole number that ``check`` accepts for ``param``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {text[:40]!r}"
            ) from None
        return _checked(check, param, value)

    return parse


def number(
    param: str, check: Callable[[str, Any], float] = validation.positive
) -> Callable[[str], float]:
    """An argparse type: a number that ``check`` accepts (a positive finite one by default;
    ``validation.non_negative`` for a weight that may be 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        return _checked(check, param, value)

    return parse


def layer_sizes(text: str) -> tuple[int, ...]:
    """An argparse type: ``400`` or ``512,256``."""
    try:
        return validation.sizes(
            "hidden_dims", [whole(validation.size, "hidden_dims")(t) for t in text.split(",")]
        )
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive sizes such as 400 or 512,256 ({e})"
        ) from None


def _checked(check: Callable[[str, Any], Any], param: str, value: Any) -> Any:
    try:
        return check(param, value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


# Flags that set RunConfig's fields: flag -> (the values it takes, help). The field is the flag's
# name with underscores, except where FIELDS says; the help adds RunConfig's default.
DATA_FLAGS = {
    "--dataset": (
        DATASETS,
        "data set: digits (8x8 grey) and photos (32x32 colour patches of two photographs) are "
        "embedded and work offline; the MNIST family, cifar10, cifar100, svhn and celeba are "
        "read from --data-dir (downloaded there when online); folder: your own pictures in "
        "--data-dir; npz: arrays in --data-path",
    ),
    "--data-dir": (
        str,
        "folder with the data set's files: the MNIST family's IDX files (DIR/MNIST/raw/... or "
        "directly), torchvision's CIFAR, SVHN or CelebA files, or for --dataset folder your "
        "pictures (PNG/JPEG), one sub-folder per class or all in one; default: data",
    ),
    "--data-path": (
        str,
        "an .npz file with arrays x_train, x_test (floats in [0,1] or uint8 8-bit images) and "
        "optional y_train, y_test, for --dataset npz",
    ),
    "--image-size": (
        whole(validation.size, "image_size"),
        "pictures (folder, cifar, svhn, celeba): resize the shorter side to S and crop the "
        "centre SxS (default: as the files are; 64 for celeba)",
    ),
    "--channels": (
        whole(validation.channels, "channels"),
        "pictures: 1 makes them grey, 3 colour (default: as the files are)",
    ),
}
MODEL_FLAGS = {
    "--model": (
        list(MODELS),
        "vae: p(x|z) p(z); cvae: conditional on the label, p(x|y,z) p(z) with y observed; m2: "
        "semi-supervised (Kingma et al. 2014), y observed for --labeled examples and summed out "
        "(enumerated) for the rest",
    ),
    "--z-dim": (whole(validation.size, "z_dim"), "size of the latent code z"),
    "--hidden-dims": (
        layer_sizes,
        "comma-separated hidden sizes, encoder order: layer widths "
        "for mlp, channel counts for conv and resnet (e.g. 400 or 512,256; 32,64 for resnet)",
    ),
    "--encoder": (list(NETS), "network family of encoder and decoder"),
    "--prior": (list(PRIORS), "prior p(z)"),
    "--likelihood": (list(LIKELIHOODS), "likelihood p(x|z)"),
    "--guide": (list(GUIDES), "guide family q(z|x)"),
    "--aux-weight": (
        number("aux_weight", validation.non_negative),
        "m2: alpha, the weight of the classifier's log q(y|x) on labelled examples (0: none)",
    ),
    "--binarize": (
        BINARIZATION,
        "dynamic: for a binary likelihood, binarize grey training data "
        "afresh in each batch and the test set once with a fixed seed; none: use data "
        "as is",
    ),
}
TRAINING_FLAGS = {
    "--epochs": (whole(validation.count, "epochs"), "passes over the training set"),
    "--batch-size": (whole(validation.count, "batch_size"), "examples per SVI step"),
    "--lr": (number("lr"), "Adam learning rate"),
    "--objective": (
        list(OBJECTIVES),
        "trace: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL); iwae: the "
        "importance-weighted bound, RenyiELBO(alpha=0), per example over --num-particles; "
        "iwae-dreg: the same bound with the doubly reparameterized guide gradient (diagonal "
        "guide); manual, manual-iwae: the hand-written ELBO and IWAE bound in plain PyTorch",
    ),
    "--num-particles": (
        whole(lambda p, v: validation.whole(p, v, high=validation.MAX_PARTICLES), "num_particles"),
        "K vectorized particles per example: the ELBO averages over them, iwae log-mean-exps",
    ),
    "--beta": (
        number("beta"),
        "weight of the KL term: E[log p(x|z)] - beta KL(q(z|x) || p(z)); 1 is the ELBO",
    ),
    "--kl-warmup": (
        whole(lambda p, v: validation.whole(p, v, low=0), "kl_warmup"),
        "N epochs over which the KL weight rises linearly, beta/N, 2 beta/N, ..., beta; "
        "0: none. The test ELBO is always the ELBO, weight 1",
    ),
    "--labeled": (
        whole(validation.count, "labeled"),
        "m2: the number of training examples whose labels it sees, picked with --seed, "
        "balanced over the classes; the rest are used without labels",
    ),
    "--seed": (whole(validation.seed, "seed"), "seeds weights, batch order and noise"),
    "--device": (str, "auto, cpu, cuda or cuda:N"),
    "--compile": (
        COMPILE,
        "on: after the first step, capture the Pyro program's step as one graph and compile it; "
        "auto: compile when the steps ahead repay the compile time; off: every step eager",
    ),
    "--stream": (
        bool,
        "keep the training set in host memory and stream batches to the device through a "
        "DataLoader, as is done anyway for a set larger than half the device's memory; the "
        "same steps and metrics as in memory",
    ),
    "--workers": (
        whole(lambda p, v: validation.whole(p, v, low=0), "workers"),
        "DataLoader worker processes when streaming (0: in the main process)",
    ),
    "--tensorboard": (
        bool,
        "after every epoch, write TensorBoard event files into RUN_DIR/tensorboard: each "
        "step's loss, the train and test ELBO, the test ELBO's reconstruction and KL terms, "
        "active units, reconstructions and samples; watch with tensorboard --logdir runs "
        "(needs pip install pyro-vae[tensorboard])",
    ),
}
# The parts' option flags: flag -> (the kinds of part it may configure, the option, values, help).
# A flag reaches every chosen part that takes that option, and is an error if none does.
OPTION_FLAGS = {
    "--prior-components": (("prior",), "components", whole(validation.count, "components"),
                           "mixture components of mog/vamp"),
    "--prior-df": (("prior",), "df", number("df"), "degrees of freedom of student-t"),
    "--likelihood-scale": (("likelihood",), "scale", number("scale"), "scale of the gaussian"),
    "--likelihood-min-scale": (("likelihood",), "min_scale", number("min_scale"),
                               "floor of the learned scale of gaussian-learned and laplace"),
    "--likelihood-bins": (("likelihood",), "bins", whole(validation.bins, "bins"),
                          "grey levels of discretized-logistic (256 for 8-bit, 17 for digits)"),
    "--flow-steps": (("prior", "guide"), "flow_steps", whole(validation.count, "flow_steps"),
                     "flow steps of the flow prior and the iaf guide"),
}  # fmt: skip
FIELDS = {"--binarize": "binarization"}
DATA_FIELDS = [FIELDS.get(flag, flag[2:].replace("-", "_")) for flag in DATA_FLAGS]
TYPICAL_SHOWN = 8  # examples in each row of score's picture


# ----------------------------------------------------------------------------------------------
# Flags onto the run configuration.


def overlay(base: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``base`` with every setting given as a flag: the flags' values win."""
    given = {
        name: getattr(args, name)
        for name in base.to_dict()
        if getattr(args, name, None) is not None and not name.endswith("_options")
    }
    config = base.replace(**given)
    options = {f"{kind}_options": dict(getattr(config, f"{kind}_options")) for kind in REGISTRIES}
    for flag, (kinds, option, _, _) in OPTION_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        chosen = {kind: getattr(config, kind) for kind in kinds}
        takers = [k for k, name in chosen.items() if option in option_names(REGISTRIES[k][name])]
        if not takers:
            names = " and ".join(f"the {kind} {name!r}" for kind, name in chosen.items())
            raise ConfigError(f"{flag} does not apply to {names}; see pyro-vae list")
        for kind in takers:
            options[f"{kind}_options"][option] = value
    return config.replace(**options)


def flag_of(name: str) -> str:
    """The flag that sets a library parameter, e.g. ``z_dim`` -> ``--z-dim``; else ``name``."""
    for flag, (kinds, option, _, _) in OPTION_FLAGS.items():
        if name in [f'{kind}_options["{option}"]' for kind in kinds]:
            return flag
    return ArgumentParser.flags.get(name, name)


# ----------------------------------------------------------------------------------------------
# The commands.


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run, config = _resumed(args)
    else:
        base = RunConfig.load(args.config) if args.config else RunConfig()
        config = overlay(base, args)
    if distributed.launched_by_torchrun():
        distributed.init_from_env(resolve_device(config.device))
    if not args.resume:
        out = args.out or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run = Run.create(out, config, overwrite=args.overwrite)
        except RunExists:
            raise ConfigError(
                f"{out} already holds a trained run; continue it with --resume, or choose "
                "another --out, or pass --overwrite"
            ) from None
    writer = distributed.is_main_process()
    with StopOnSignals(announce=writer) as signals, warnings.catch_warnings():
        # a non-finite loss stops training with its own message (epoch, step, a hint)
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            run.train(
                epochs=config.epochs,
                lr=config.lr,
                device=config.device,
                compile=config.compile,
                stream=config.stream,
                workers=config.workers,
                tensorboard=config.tensorboard,
                progress=not args.quiet,
                stop=signals.requested,
            )
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
        files = (*RUN_FILES, CLASS_PICTURE) if run.vae.drawable_labels else RUN_FILES
        files += (f"{BOARD}/",) if run.config.tensorboard else ()
        print(f"run folder: {run.path}  ({', '.join(files)})")
        baseline = run.summary["baseline_log_likelihood"]
        against = "" if baseline is None else f" (independent-pixel baseline: {baseline:.2f})"
        print(f"test ELBO: {run.summary['test_elbo']:.2f} nats per example{against}")
        if "test_bits_per_dim" in run.summary:
            baseline = run.summary.get("baseline_bits_per_dim")
            against = "" if baseline is None else f" (independent-pixel baseline: {baseline:.3f})"
            print(f"test bits per dimension: {run.summary['test_bits_per_dim']:.3f}{against}")
        if "test_accuracy" in run.summary:
            print(f"test accuracy: {run.summary['test_accuracy']:.4f}")
    return 0


def _resumed(args: argparse.Namespace) -> tuple[Run, RunConfig]:
    """The run in ``--out`` and its config with this command's flags on top, which may change
    only the settings a resumed run may change."""
    for flag, given in (("--overwrite", args.overwrite), ("--config", args.config)):
        if given:
            raise ConfigError(
                f"--resume continues the run in --out as it is; {flag} does not go with it"
            )
    if args.out is None:
        raise ConfigError("--resume needs --out, the run folder to continue")
    run = Run.open(args.out)
    config = overlay(run.config, args)
    changed = [
        f"{flag_of(name)}: {old!r} -> {new!r}"
        for name, old, new in run.config.changes(config)
        if name not in RESUMABLE
    ]
    if changed:
        raise ConfigError(
            f"--resume: this command asks for other settings than the run in {args.out} "
            f"({'; '.join(changed)}); only {', '.join(map(flag_of, RESUMABLE))} may change"
        )
    return run, config


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
    print(f"wrote {run.path / 'evaluation.json'}")
    return 0


def output_path(
    out: str | None, default: Path, endings: Sequence[str], what: str, flag: str = "--out"
) -> Path:
    """The file to write: ``out`` (given as ``flag``) or ``default``, checked before the work is
    done: not a folder, with one of ``endings`` (``what`` such a file is), in a folder that
    exists."""
    path = Path(out) if out else default
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name a file such as {path / default.name}")
    if path.suffix[1:].lower() not in endings:
        one = f"the ending .{endings[0]}" if len(endings) == 1 else None
        needs = one or f"one of the endings {', '.join(endings)}"
        raise ConfigError(f"{flag} {path}: {what} needs {needs}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    return path


def picture_path(out: str | None, default: Path, flag: str = "--out") -> Path:
    """The picture file to write: ``out`` or ``default``, checked before the work is done."""
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    return output_path(out, default, formats, "a picture file", flag)


def write_output(write: Any, *args: Any, path: Path) -> None:
    """``write(*args, path)``, with a failed write (permissions, a full disk) as one line."""
    try:
        write(*args, path)
    except OSError as e:
        raise PyroVAEError(f"cannot write {path} ({e.strerror or e})") from None


def cmd_sample(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    of_class = "" if args.label is None else f"-class{args.label}"
    out = picture_path(args.out, run.path / f"sample{of_class}-seed{args.seed}-n{args.num}.png")
    pyro.set_rng_seed(args.seed)
    write_output(plot_samples, run.vae.sample(args.num, label=args.label), path=out)
    of = "" if args.label is None else f" of class {args.label}"
    print(f"wrote {args.num} samples{of} to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / f"reconstruct-n{args.num}.png")
    x, reconstructions = run.reconstructions(args.num, args.device)
    write_output(plot_reconstructions, x, reconstructions, path=out)
    print(f"wrote {len(x)} test images and their reconstructions to {out}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = picture_path(args.out, run.path / "confusion.png")
    result = run.classify(args.device)
    accuracy, n = result["test_accuracy"], len(run.data.x_test)
    title = f"{run.path.name}: test accuracy {accuracy:.4f} ({n} images)"
    write_output(plot_confusion, result["confusion"], title, path=out)
    print(f"test accuracy: {accuracy:.4f} ({n} test images)")
    print(f"wrote the confusion matrix to {out}")
    return 0


def _data_of(run: Run, args: argparse.Namespace) -> tuple[Dataset, bool]:
    """The data the data flags name on top of the run's own data settings, and whether they are
    the run's own."""
    given = {name: value for name in DATA_FIELDS if (value := getattr(args, name)) is not None}
    config = run.config.replace(**given)
    return run.data_of(config), run.same_data(config)


def cmd_encode(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = output_path(args.out, run.path / "codes.npz", ["npz"], "a NumPy archive")
    data, own = _data_of(run, args)
    seed = run.config.seed if args.seed is None else args.seed
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


def cmd_score(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    out = output_path(args.out, run.path / "scores.csv", ["csv"], "a CSV file")
    picture = picture_path(args.picture, run.path / "typical.png", "--picture")
    data, _ = _data_of(run, args)
    seed = run.config.seed if args.seed is None else args.seed
    x, labels = run.inputs(args.split, data)
    scores = score(run.vae, x, args.iwae_k, labels=labels, seed=seed, progress=not args.quiet)
    write_output(partial(write_scores, labels=labels), scores, path=out)
    most, least = most_and_least_typical(scores["log_px"], TYPICAL_SHOWN)
    write_output(plot_typical, x[most], x[least], path=picture)
    print(f"scored {len(x)} {args.split} examples of {data.name} (IWAE k={args.iwae_k}); means:")
    for name, values in scores.items():
        print(f"  {name:<16}{float(values.mean()):12.4f}   {COLUMNS[name]}")
    print(f"wrote {out} and the most and least typical examples to {picture}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    run = Run.open(args.run_dir, device=args.device)
    name = f"interpolation-{args.from_index}-{args.to_index}.png"
    out = picture_path(args.out, run.path / name)
    size = len(run.data.x_test)
    ends = [validation.index(p, getattr(args, p), size) for p in ("from_index", "to_index")]
    x = run.test_images(torch.tensor(ends), args.device)
    images = interpolate(run.vae, x[0], x[1], args.steps, args.path)
    title = f"test example {ends[0]} to {ends[1]}, {args.path} path"
    write_output(partial(plot_interpolation, title=title), images, path=out)
    print(f"wrote {args.steps} images from test example {ends[0]} to {ends[1]} to {out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("models (--model):")
    for name, cls in MODELS.items():
        print(f"  {name:<22}{cls.description}")
    for kind, registry in REGISTRIES.items():
        print(f"{kind}s (--{kind}):")
        for name, options, description in describe(registry):
            print(f"  {name:<22}{description}" + (f"  [{options}]" if options else ""))
    return 0


def cmd_check_elbo(args: argparse.Namespace) -> int:
    if args.run_dir is not None:
        run = Run.open(args.run_dir)
        vae, data, binarization = run.vae, run.data, run.config.binarization
    else:
        config = overlay(RunConfig(), args)
        data = load_dataset(config.dataset, **config.data_options())
        classes = MODELS[config.model].label_classes(data)
        pyro.set_rng_seed(args.seed)
        vae = build_model(config.model, data.x_shape, classes, **config.vae_options())
        binarization = config.binarization
    x = eval_inputs(vae.likelihood, data.x_test[: args.batch_size], binarization)
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


# ----------------------------------------------------------------------------------------------
# The parser.


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with each mistake reported in one line, no abbreviated flags (``--epoch`` is
    not ``--epochs``), the nearest flag suggested for a misspelt one, and a record of which flag
    sets each parameter (its ``dest``), across all commands: how the library's errors get their
    flags."""

    flags: dict[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        unknown = [arg.split("=")[0] for arg in extras if arg.startswith("-")]
        if unknown:  # a command's own parser knows its flags: the top-level parser does not
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._nearest(unknown[0])}")
        return parsed, extras

    def _nearest(self, flag: str) -> str:
        """"; did you mean --z-dim?" for ``--zdim`` or ``--z_dim``, or nothing."""
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        near = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.75)
        return f"; did you mean {near[0]}?" if near else ""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        long = [flag for flag in action.option_strings if flag.startswith("--")]
        if long:  # --out, not -o; --stream, not --no-stream
            ArgumentParser.flags.setdefault(action.dest, long[0])
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default said once: appended where the help does not already say it and there
    is one to say (not ``None``: "not given", whose meaning the help gives); descriptions and
    the examples after the flags keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = any(action.default is value for value in (None, False, argparse.SUPPRESS))
        if silent or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: {action.default})"


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
    "check-elbo": [
        "pyro-vae check-elbo runs/digits",
        "pyro-vae check-elbo --prior vamp --guide iaf",
    ],
}


def _options() -> dict[str, tuple[Any, str]]:
    """The parts' option flags, each help ending with the default of every part that takes it."""
    flags = {}
    for flag, (kinds, option, values, help) in OPTION_FLAGS.items():
        defaults = [
            f"{name} {default}"
            for kind in kinds
            for name, default in option_defaults(REGISTRIES[kind], option).items()
        ]
        flags[flag] = (values, f"{help} (default: {', '.join(defaults)})")
    return flags


def _shown(default: Any) -> str:
    """A setting's default as its flag would take it: a switch ``on`` or ``off``, sizes as
    ``512,256``."""
    if isinstance(default, bool):  # not a dict lookup: 1 == True and 0 == False there
        return "on" if default else "off"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def _add_flags(
    p: argparse.ArgumentParser | Any, flags: dict[str, tuple[Any, str]], shown: bool = True
) -> None:
    """Flags whose value, when given, overrides a setting (default ``None``: not given); their
    help shows RunConfig's default if ``shown``."""
    defaults = RunConfig().to_dict() if shown else {}
    for flag, (values, help) in flags.items():
        dest = FIELDS.get(flag, flag[2:].replace("-", "_"))
        default = defaults.get(dest)
        if default is not None:
            help += f" (default: {_shown(default)})"
        if values is bool:  # a switch, --X on and --no-X off (on a resume too)
            p.add_argument(flag, dest=dest, help=help, action=argparse.BooleanOptionalAction)
            continue
        kind = {"choices": values} if isinstance(values, list | tuple) else {"type": values}
        p.add_argument(flag, dest=dest, help=help, **kind)


def _add_train_parser(commands: Any) -> None:
    p = commands.add_parser("train", help="train a VAE and write a run folder")
    p.add_argument(
        "--config",
        help="a config file (JSON, such as a run's config.json, or TOML) "
        "whose settings this command's flags override",
    )
    for flags in (DATA_FLAGS, TRAINING_FLAGS, MODEL_FLAGS, _options()):
        _add_flags(p, flags)
    p.add_argument("--out", help="run folder to write (default: runs/DATASET-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    resumable = [flag_of(name) for name in RESUMABLE]
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, exactly as if it had not "
        f"stopped; its settings are kept (only {', '.join(resumable[:-1])} and {resumable[-1]} "
        "may change)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_run_commands(commands: Any) -> None:
    """evaluate, sample and reconstruct: commands on a trained run folder."""
    seed = whole(validation.seed, "seed")
    run_dir = {"metavar": "RUN_DIR", "help": "a folder written by pyro-vae train"}
    p = commands.add_parser("evaluate", help="test ELBO of a run; writes RUN_DIR/evaluation.json")
    p.add_argument("run_dir", **run_dir)
    p.add_argument(
        "--seed", type=seed, help="seed of the Monte Carlo estimate (default: the run's)"
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's, else cpu)")
    p.add_argument(
        "--iwae-k",
        type=whole(lambda p, v: validation.whole(p, v, low=0), "iwae_k"),
        default=1000,
        help="particles of the importance-weighted log-likelihood "
        "estimate (5000 is the figure papers report; 0 skips it)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE,
        help="compile the IWAE bound's chunks: on, off, or auto (when the chunks ahead repay "
        "the compile time); default: the run's --compile",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("sample", help="draw images from a trained model")
    p.add_argument("run_dir", **run_dir)
    p.add_argument(
        "-n",
        "--num",
        default=64,
        help=f"number of images (at most {validation.MAX_IMAGES})",
        type=whole(lambda p, v: validation.whole(p, v, high=validation.MAX_IMAGES), "num"),
    )
    p.add_argument(
        "--label",
        type=whole(lambda p, v: validation.whole(p, v, low=0), "label"),
        help="cvae, m2: draw images of this class only; without it, the classes in turn",
    )
    p.add_argument(
        "--out",
        help="PNG file to write (default: RUN_DIR/sample-seedS-nN.png, or "
        "sample-classK-seedS-nN.png: training's samples.png is kept)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the draws")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser("reconstruct", help="reconstruct test images with a trained model")
    p.add_argument("run_dir", **run_dir)
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
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_reconstruct)


def _add_data_command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command on a trained run and a split of its data, or of other data of the same shape:
    encode and score. Its own flags follow these."""
    p = commands.add_parser(name, **kwargs)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    _add_flags(p.add_argument_group("data (default: the run's own)"), DATA_FLAGS, shown=False)
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


def _add_encode_parser(commands: Any) -> None:
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


def _add_score_parser(commands: Any) -> None:
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
        type=whole(validation.count, "iwae_k"),
        default=1000,
        help="particles of each example's IWAE estimate of log p(x) (default: 1000)",
    )
    p.add_argument("--out", help="the CSV file to write (default: RUN_DIR/scores.csv)")
    p.add_argument(
        "--picture",
        help="picture of the most and least typical examples (default: RUN_DIR/typical.png)",
    )
    p.set_defaults(func=cmd_score)


def _add_interpolate_parser(commands: Any) -> None:
    p = commands.add_parser(
        "interpolate",
        help="a picture of the images decoded between the codes of two test examples",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train")
    index = whole(lambda p, v: validation.whole(p, v, low=0), "index")
    p.add_argument("--from", dest="from_index", type=index, required=True, metavar="I",
                   help="the test example to start from")  # fmt: skip
    p.add_argument("--to", dest="to_index", type=index, required=True, metavar="J",
                   help="the test example to end at")  # fmt: skip
    p.add_argument(
        "--steps",
        type=whole(lambda p, v: validation.whole(p, v, low=2, high=validation.MAX_IMAGES), "steps"),
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
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(func=cmd_interpolate)


def _add_classify_parser(commands: Any) -> None:
    p = commands.add_parser(
        "classify",
        help="test accuracy of an m2 run's classifier; writes a confusion-matrix picture",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a folder written by pyro-vae train --model m2"
    )
    p.add_argument("--out", help="PNG file to write (default: RUN_DIR/confusion.png)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_classify)


def _add_check_elbo_parser(commands: Any) -> None:
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
    for flags in (DATA_FLAGS, MODEL_FLAGS, _options()):
        _add_flags(p, flags)
    p.add_argument(
        "--batch-size",
        type=whole(validation.count, "batch_size"),
        default=64,
        help="test examples compared",
    )
    p.add_argument(
        "--num-particles",
        default=1,
        help="Monte Carlo particles per example",
        type=whole(
            lambda p, v: validation.whole(p, v, high=validation.MAX_PARTICLES), "num_particles"
        ),
    )
    p.add_argument(
        "--kl-weight",
        default=0.5,
        type=number("kl_weight"),
        help="the KL weight (a beta, or a warm-up's weight) of the weighed rows",
    )
    p.add_argument(
        "--iwae-particles",
        default=5,
        type=whole(
            lambda p, v: validation.whole(p, v, high=validation.MAX_PARTICLES), "iwae_particles"
        ),
        help="particles of the IWAE and DReG rows",
    )
    p.add_argument(
        "--seed",
        type=whole(validation.seed, "seed"),
        default=0,
        help="seed of the model and of the draws",
    )
    p.set_defaults(func=cmd_check_elbo)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders written as Pyro programs."
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(commands)
    _add_run_commands(commands)
    for add in (_add_encode_parser, _add_score_parser, _add_interpolate_parser):
        add(commands)
    _add_classify_parser(commands)
    p = commands.add_parser(
        "list", help="the models and the registered priors, likelihoods and guides"
    )
    p.set_defaults(func=cmd_list)
    _add_check_elbo_parser(commands)
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
        return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e.worded(flag_of)}", file=sys.stderr)
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
