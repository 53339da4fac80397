"""vatt: pretrain and evaluate VATT (video-audio-text Transformers) at scale."""

__version__ = "0.1.0"
