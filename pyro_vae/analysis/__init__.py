"""Analysis of a trained model: evaluation, posterior inspection, codes, scores, latent
walks and pictures."""
