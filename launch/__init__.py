"""Launchers: the distributed environment, and rendering/submitting Slurm jobs."""
