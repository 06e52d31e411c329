"""Training and inference machinery: optimisation, checkpoints, distributed set-up, logging."""
