"""QCS: Quadruplet Cross Similarity for facial expression recognition."""

__version__ = "0.1.0"
