"""Command-line tools built on the trainer (they may import the strategies; trainer/ never does)."""
