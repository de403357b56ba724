"""Attack pipeline: learned recovery attackers and white-box inversion against protected images."""
