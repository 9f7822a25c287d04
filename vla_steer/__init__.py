"""vla_steer: steer frozen diffusion / flow-matching robot policies through their initial noise with RL."""

__version__ = "0.1.0"
