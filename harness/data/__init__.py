"""Rollout datasets: the on-disk format, `harness collect`, LIBERO's own demonstrations."""
