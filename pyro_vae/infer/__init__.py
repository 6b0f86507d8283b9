"""Inference: the objectives a model is trained and scored by. The ELBO, IWAE, DReG and M2's
objectives by Pyro and by hand, and their registries (:mod:`pyro_vae.infer.elbo`); Pyro's ELBOs
without host reads (:mod:`pyro_vae.infer.sync_free`); the step compiled as one graph
(:mod:`pyro_vae.infer.compiling`); and the check of the hand-written ELBO against Pyro's,
``pyro-vae check-elbo`` (:mod:`pyro_vae.infer.elbo_check`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, the
objectives take the Pyro programs of :mod:`pyro_vae.models` and are used by the trainer
(:mod:`pyro_vae.training`) and the evaluation (:mod:`pyro_vae.analysis`). They import the models
and parts, never the training, the run folder or the command line."""
