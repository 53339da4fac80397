"""The VATT model (spec: ../shared/SPEC-vatt.md). `build_model(cfg)` is the public entry."""

from vatt.sizes import SIZES, Size
from vatt.model.vatt import MODALITIES, VATT, InputError, build_model

__all__ = ["SIZES", "Size", "MODALITIES", "VATT", "InputError", "build_model"]
