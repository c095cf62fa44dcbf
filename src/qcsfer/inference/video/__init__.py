"""Video and cameras: faces found and tracked over frames, smoothed expressions, outputs.

What is here is only what video adds to the recognizer's own steps (`prepare`, `classify`):
reading frames (`io`, `live`), detection on downscaled frames bridged by the tracker
(`detect`, `tracking`), per-track smoothing (`smoothing`), the frame loop (`analysis`) and
the files written per video (`outputs`, `summary`, `timeline`).
"""

from .analysis import FrameRecognizer, TrackedPrediction, VideoAnalysis, VideoFrame

__all__ = ["FrameRecognizer", "TrackedPrediction", "VideoAnalysis", "VideoFrame"]
