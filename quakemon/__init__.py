"""quakemon: a streaming seismic event detector.

SeedLink (or archived MiniSEED) -> per-station buffers -> aligned windows -> STFT spectrograms ->
HybridViT -> trigger logic -> detections published over ZeroMQ.
"""

__version__ = "0.1.0"
