"""The parts a model is built from: priors p(z) (:mod:`pyro_vae.parts.priors`),
likelihoods p(x|z) (:mod:`pyro_vae.parts.likelihoods`), guide families q(z|x)
(:mod:`pyro_vae.parts.guides`), the encoder and decoder networks
(:mod:`pyro_vae.parts.networks`), the distributions Pyro lacks
(:mod:`pyro_vae.parts.distributions`), and the look-up of each part by name
(:mod:`pyro_vae.parts.registry`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, the parts
come before the models that assemble them (:mod:`pyro_vae.models`). They import only the
package's base modules (:mod:`pyro_vae.errors`, :mod:`pyro_vae.validation`,
:mod:`pyro_vae.device`)."""
