"""charrnn: character-level LSTM / GRU / vanilla RNN language models, from Python and the command line.

    import charrnn
    model = charrnn.load("out/best.pt")
    print(model.sample(500, prime="ROMEO:", temperature=0.8, seed=1))
    run = charrnn.train("input.txt", out_dir="runs/x", hidden_size=256, max_time="5m")

``__all__`` is the public API (docs/api.md). The library never prints; the command-line interface
(``charrnn.cli``) decides what the user sees.
"""

__version__ = "1.1.0"

from charrnn.api import EvalResult, Model, Score, evaluate, load  # noqa: E402
from charrnn.errors import (  # noqa: E402
    CharRNNError,
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    OutputError,
)
from charrnn.run import train  # noqa: E402
from charrnn.sample import Beam  # noqa: E402
from charrnn.scoring import RecordScore, Surprise  # noqa: E402
from charrnn.trainer import Callback, EvalInfo, StepInfo, TrainResult  # noqa: E402

__all__ = [
    "__version__",
    "load",
    "Model",
    "Score",
    "Beam",
    "RecordScore",
    "Surprise",
    "train",
    "TrainResult",
    "Callback",
    "StepInfo",
    "EvalInfo",
    "evaluate",
    "EvalResult",
    "CharRNNError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "OutputError",
]
