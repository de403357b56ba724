"""Protection engine: the PixelFade algorithm, comparison methods, the ignite engines and run machinery."""
