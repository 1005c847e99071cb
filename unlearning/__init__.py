"""unlearning-lab: machine unlearning for diffusion models, with original vs unlearned comparisons."""

__version__ = "0.1.0"
