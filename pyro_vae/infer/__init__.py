"""Inference: the objectives by Pyro and by hand (:mod:`pyro_vae.infer.elbo`), Pyro's ELBOs
without host reads (:mod:`pyro_vae.infer.sync_free`), compiling (:mod:`pyro_vae.infer.compiling`)
and the check of the hand-written ELBO against Pyro's (:mod:`pyro_vae.infer.elbo_check`)."""
