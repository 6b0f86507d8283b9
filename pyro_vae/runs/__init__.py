"""Run folders: one training run on disk. :class:`~pyro_vae.runs.folder.Run` creates,
trains, checkpoints, evaluates and reopens it (:mod:`pyro_vae.runs.folder`); checkpoint and JSON
files are written atomically (:mod:`pyro_vae.runs.checkpoint`); TensorBoard's event files are
written after every epoch (:mod:`pyro_vae.runs.board`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, a run
folder puts the rest together: it holds a :class:`~pyro_vae.config.RunConfig`, trains with
:mod:`pyro_vae.training`, and writes the figures and pictures of :mod:`pyro_vae.analysis` into
the folder, so it imports both; the command line (:mod:`pyro_vae.cli`) works on it. Of this
subpackage, the analysis imports only :func:`~pyro_vae.runs.checkpoint.atomic_write`."""
