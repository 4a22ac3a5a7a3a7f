"""Tasks: what a signal is, how it is sampled for training, and how a fit is evaluated."""
