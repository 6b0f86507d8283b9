"""What a run folder says of its trained model: ``summary.json`` and the pictures when training
ends, the test-set evaluation recorded in ``evaluation.json``, the codes' linear probe, M2's
classifier, and the inputs the commands on a run score. :class:`RunReports` is mixed into
:class:`~pyro_vae.runs.folder.Run`, whose folder, config, model, training state and data it
reads."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import validation
from pyro_vae.analysis.codes import Probe, encode, linear_probe
from pyro_vae.analysis.evaluation import (
    active_units,
    add_bits_per_dim,
    baseline_log_likelihood,
    confusion_matrix,
    evaluate,
)
from pyro_vae.analysis.plots import (
    plot_class_samples,
    plot_elbo,
    plot_reconstructions,
    plot_samples,
)
from pyro_vae.config import RunConfig
from pyro_vae.data.sources import Dataset, as_floats, check_shape, eval_inputs
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError
from pyro_vae.files import write_json
from pyro_vae.models.m2 import predict
from pyro_vae.models.program import Program
from pyro_vae.models.user import skipped_without_method
from pyro_vae.runs import board
from pyro_vae.runs.layout import (
    CLASS_PICTURE,
    EVALUATION,
    PICTURES,
    RECONSTRUCTED,
    SPLITS,
    SUMMARY,
)
from pyro_vae.training import distributed
from pyro_vae.training.state import TrainState
from pyro_vae.version import __version__


class RunReports:
    """The reports of a trained run, for :class:`~pyro_vae.runs.folder.Run`, which sets the
    attributes below (its folder ``path``, ``config``, model ``vae``, training ``state``, the
    ``device`` it trained on) and its ``data``."""

    path: Path
    config: RunConfig
    vae: Program
    state: TrainState
    device: str
    summary: dict[str, Any] | None
    data: Dataset

    def finish(self) -> None:
        """Write ``summary.json`` (kept as ``self.summary``) and the pictures of the trained run."""
        if not distributed.is_main_process():
            return
        history, data = self.state.history, self.data
        binarization = self.config.training.binarization
        x_test = eval_inputs(self.vae.likelihood, data.x_test, binarization).to(self.device)
        labels = None if data.y_test is None else data.y_test.to(self.device)
        self.summary = {
            "test_elbo": history.test_elbo[-1],
            "train_elbo": history.train_elbo[-1],
            "epochs": history.epoch[-1],
            "device": self.device,
            "train_seconds": sum(history.seconds),
            "compile": history.compile,
            "compile_seconds": history.compile_seconds,
            "data": history.data,
            "baseline_log_likelihood": baseline_log_likelihood(
                self.vae, data.x_train, x_test, data.release_pages
            ),
            "active_units": active_units(self.vae, x_test, labels=labels)[0],
            "num_train": len(data.x_train),
            "num_test": len(data.x_test),
            "versions": versions(),
        }
        self.summary.update(self.vae.test_metrics(x_test, labels))
        add_bits_per_dim(self.summary, self.vae)
        write_json(self.path / SUMMARY, self.summary)
        vae = self.vae
        with skipped_without_method(PICTURES[0]):
            reconstructions = self.reconstructions(RECONSTRUCTED, self.device)
            plot_reconstructions(*reconstructions, self.path / PICTURES[0])
        with skipped_without_method(PICTURES[1]):
            plot_samples(vae.sample(board.SAMPLES), self.path / PICTURES[1])
        plot_elbo(history.__dict__, self.path / PICTURES[2])
        if vae.drawable_labels:
            plot_class_samples(vae, self.path / CLASS_PICTURE)

    def reconstructions(
        self, n: int, device: str | torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` test images spread evenly over the test set (the first and the last among them;
        all of them for ``n`` at least its size), on ``device``, and their reconstructions: given
        their labels for the conditional VAE, M2's most probable ones for M2. Spread, because a
        test set may come in order: the photos' first 32 patches are all sky.

        :param n: the number of test images.
        :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a :class:`torch.device`.
        """
        vae, data = self.vae, self.data
        m = len(data.x_test)
        index = torch.linspace(0, m - 1, min(n, m)).round().long()
        x = self.test_images(index, device)
        labels = None if data.y_test is None else data.y_test[index]
        return x, vae.reconstruct(x, *vae.condition(labels, x))

    def test_images(self, index: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """The test images at ``index`` as they are (grey levels, not binarized), on ``device``:
        the inputs of the pictures of reconstructions and interpolations.

        :param index: the test images' indices, int64.
        :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a :class:`torch.device`.
        """
        return as_floats(self.data.x_test[index].to(resolve_device(device)))

    def classify(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """The test accuracy of M2's classifier, argmax q(y|x) (``test_accuracy``), and the
        ``confusion`` matrix, rows the true labels and columns the predicted ones.

        :param device: where to run the classifier: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``
            or a :class:`torch.device`.
        """
        vae = self.vae
        if not hasattr(vae, "classify"):
            raise ConfigError(
                f"{self.path} holds model {vae.name!r}, which has no classifier; train one with "
                "{model} m2"
            )
        vae.to(resolve_device(device))
        x = eval_inputs(vae.likelihood, self.data.x_test, self.config.training.binarization)
        x, labels = x.to(resolve_device(device)), self.data.y_test
        predicted = predict(vae, x)
        return {
            "test_accuracy": float((predicted.cpu() == labels).double().mean()),
            "confusion": confusion_matrix(predicted, labels, len(vae.drawable_labels)),
        }

    def same_data(self, config: RunConfig) -> bool:
        """Whether ``config``'s data settings are the run's own.

        :param config: settings whose data settings are compared with the run's.
        """
        return config.data == self.config.data

    def data_of(self, config: RunConfig) -> Dataset:
        """The data set that ``config``'s data settings name, checked against the run's model:
        ``data`` when they are the run's own, another data set of the same shape otherwise.

        :param config: settings whose data settings name the data set.
        """
        if self.same_data(config):
            return self.data
        data = config.data.load()
        check_shape(self.vae.x_shape, data, f"data set {config.data.dataset!r}")
        return data

    def inputs(
        self, split: str = "test", data: Dataset | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``split`` (``"train"`` or ``"test"``) of ``data`` (default: the run's own) as the
        model scores it, binarized as the run's test set is if the likelihood needs it
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the VAE's device, with its integer labels
        (or ``None``).

        :param split: ``"train"`` or ``"test"``.
        :param data: a data set of the run's example shape; ``None``: the run's own.
        """
        data = self.data if data is None else data
        x, y = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}[
            validation.choice("split", split, SPLITS)
        ]
        device = next(self.vae.parameters()).device
        x = eval_inputs(self.vae.likelihood, x.to(device), self.config.training.binarization)
        return x, None if y is None else y.to(device)

    def linear_probe(self, data: Dataset | None = None, *, progress: bool = True) -> Probe:
        """A linear probe of the run's codes (:func:`~pyro_vae.analysis.codes.linear_probe`),
        fitted on the training split of ``data`` (default: the run's own) and scored on its test
        split. On the run's own data it is also recorded in ``evaluation.json``, as
        ``linear_probe_accuracy`` and ``linear_probe_chance``. The label models' codes are of
        q(z|x,y) at the true labels, so their probe says how much of y leaks into z.

        :param data: a data set of the run's example shape (:meth:`data_of`); ``None``: the run's
            own.
        :param progress: show a progress bar while encoding.
        """
        seed = self.config.training.seed
        train, test = (
            encode(self.vae, *self.inputs(split, data), seed=seed, progress=progress)
            for split in SPLITS
        )
        probe = linear_probe(train, test, seed=seed)
        if data is None or data is self._data:
            self.record(
                {"linear_probe_accuracy": probe.accuracy, "linear_probe_chance": probe.chance}
            )
        return probe

    def record(self, figures: dict[str, Any]) -> dict[str, Any]:
        """Add ``figures`` to ``evaluation.json`` and return what it then holds: the figures
        already there stay if they are of the same epoch (they are dropped otherwise).

        :param figures: figures by name, plain JSON data.
        """
        path, kept = self.path / EVALUATION, {}
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: these figures start it afresh
            pass
        if not isinstance(kept, dict) or kept.get("epoch") != self.state.epoch:
            kept = {}
        kept |= figures | {"epoch": self.state.epoch}
        if distributed.is_main_process():
            write_json(path, kept)
        return kept

    def evaluate(
        self,
        *,
        seed: int | None = None,
        device: str | None = None,
        iwae_k: int | str = "auto",
        progress: bool = True,
        compile: str | None = None,
    ) -> dict[str, Any]:
        """Score the run on its own test set (:func:`pyro_vae.analysis.evaluation.evaluate`) and
        write ``evaluation.json``. ``seed`` defaults to the run's seed and ``device`` to the one it
        trained on (the CPU when that one is not present), so that the test ELBO equals the one
        in ``summary.json``. ``compile`` (default: the run's) may compile the IWAE bound's
        chunks (:func:`pyro_vae.analysis.evaluation.iwae_estimate`). The IWAE bound with ``iwae_k``
        particles costs about ``iwae_k`` test ELBOs; ``"auto"`` takes the largest k of 1000,
        500, 200, ... whose pass is reckoned to fit 5 minutes on the device's type
        (:func:`pyro_vae.analysis.evaluation.choose_iwae_k`), recorded as ``iwae_k`` with
        ``iwae_k_auto``; ``progress`` shows its progress bar and how long it will take.

        :param seed: seeds every estimate; ``None``: the run's seed.
        :param device: where to score; ``None``: where it trained, or the CPU when that is not
            present.
        :param iwae_k: the particles of the IWAE estimate: ``"auto"``, a number, or 0, which
            skips it.
        :param progress: show a progress bar (tqdm) for the IWAE estimate, and how long it will
            take; ``False`` for neither.
        :param compile: ``"on"``, ``"auto"`` or ``"off"``, for the IWAE bound's chunks; ``None``:
            the run's.
        """
        if device is None:
            device = self.device if self.device == "cpu" or torch.cuda.is_available() else "cpu"
        self.vae.to(resolve_device(device))
        training = self.config.training
        seed = training.seed if seed is None else seed
        settings = {"objective": self.config.objective.objective}
        settings |= {"binarization": training.binarization}
        settings["compile"] = training.compile if compile is None else compile
        result = evaluate(
            self.vae, self.data, seed=seed, iwae_k=iwae_k, progress=progress, **settings
        )
        result["epoch"] = self.state.epoch
        self.record(result)
        return result


def versions() -> dict[str, str]:
    """The versions a run was made with, recorded in its summary."""
    return {
        "pyro_vae": __version__,
        "pyro": pyro.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
