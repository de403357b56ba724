"""Protection methods: tensors in, tensors out, no files (PixelFade, its reference loop, AVIH, baselines)."""
