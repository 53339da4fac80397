"""Downstream evaluation of a pretrained VATT (spec section 7): metrics, frozen-feature linear
probes, zero-shot retrieval, reports and the model registry with its promotion gate.

Submodules import torch; import them directly (`from vatt.evaluate.metrics import ...`)."""
