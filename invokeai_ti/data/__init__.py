"""Training data: find and decode images, resize/crop/flip, prompt templates and a resumable sample
order (dataset), and the VAE latents, cached once per image and flip (latents)."""
