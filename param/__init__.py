"""`param` strategies: how weights are held. Importing this package registers them all."""
from param import full  # noqa: F401
