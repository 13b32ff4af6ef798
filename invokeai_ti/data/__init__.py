"""Training data: find and decode images, resize/crop/flip, prompt templates and a resumable sample
order (dataset), aspect-ratio buckets (buckets), each sample's prompt from templates and captions
(captions), loss masks (masks), and the VAE latents, cached once per image and flip with the masks
on the latent grid (latents)."""
