"""What every pipeline shares: the launcher, resume and checkpoints, feature extraction."""
