"""Ray Train glue: the per-worker loop and the TorchTrainer builder."""
