"""`optim` strategies. Importing this package registers them all."""
from optim import adamw  # noqa: F401
