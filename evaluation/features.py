"""Features of the authorization model for scoring, as a Re-ID service extracts them."""
import torch


def extract_features(model, images, chunk_size):
    """Eval-mode features of a batch, fp32, without building a graph, ``chunk_size`` images at a time."""
    with torch.no_grad():
        return torch.cat([model(part).float() for part in images.split(chunk_size)])
