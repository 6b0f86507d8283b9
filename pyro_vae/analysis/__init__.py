"""Analysis of a trained model: its figures on a test set, the ELBO, IWAE's log p(x), KL per
dimension and active units (:mod:`pyro_vae.analysis.evaluation`); its guide against the true
posterior (:mod:`pyro_vae.analysis.inspection`); its codes and their linear probe
(:mod:`pyro_vae.analysis.codes`); log p(x) and out-of-distribution scores per example
(:mod:`pyro_vae.analysis.scores`); walks between two inputs' codes
(:mod:`pyro_vae.analysis.walks`); and pictures (:mod:`pyro_vae.analysis.plots`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, each
function takes a model and data, whether from Python or from a run folder's checkpoint: the
analysis imports the data, parts, models and objectives, and no training; of the run folder, only
its atomic file writes (:func:`~pyro_vae.runs.checkpoint.atomic_write`).
:class:`~pyro_vae.runs.folder.Run` and the command line call it on a run."""
