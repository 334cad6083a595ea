"""Generative tasks (VAE, DCGAN, DDPM) and the pinned feature extractors behind their FID / KID."""
