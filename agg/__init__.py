"""`agg` strategies: how workers' gradients are combined. Importing this package registers them all."""
from agg import mean  # noqa: F401
