"""The trainer core: config, data, engine, loop, checkpoints, logging. It knows no method."""
