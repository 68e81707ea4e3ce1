"""The TinyOpenFold v1 Evoformer in pure PyTorch: no Ray, no torch.distributed, no logging."""

from tinyfold_ray.model.evoformer import EvoformerBlock, TinyFold, distance_loss, num_parameters

__all__ = ["EvoformerBlock", "TinyFold", "distance_loss", "num_parameters"]
