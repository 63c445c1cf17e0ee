"""charrnn: character-level LSTM / GRU / vanilla RNN language models.

The library never prints; the command-line interface (``charrnn.cli``) decides what the user sees.
"""

__version__ = "1.0.0"

from charrnn.errors import CharRNNError  # noqa: E402

__all__ = ["__version__", "CharRNNError"]
