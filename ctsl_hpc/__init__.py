"""Contrastive teacher-student learning for noisy speech emotion recognition, on HPC clusters."""

__version__ = "0.1.0"
