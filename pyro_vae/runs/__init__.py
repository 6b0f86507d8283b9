"""Run folders: a training run's configuration, checkpoints, metrics and pictures on disk
(:mod:`pyro_vae.runs.folder`), written atomically (:mod:`pyro_vae.runs.checkpoint`), and its
TensorBoard events (:mod:`pyro_vae.runs.board`)."""
