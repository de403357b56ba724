"""Training pipeline: the Re-ID recipes (AGW, visible-infrared, text-to-image)."""
