"""The parts a model is built from: priors, likelihoods, guide families, networks and
distributions, each by name in a registry (:mod:`pyro_vae.parts.registry`)."""
