"""rnnkit: recurrent neural networks from the equations, in NumPy.

The layers follow PyTorch's constructors, names and shapes; the cells follow the
notation of the Sequence Models course. See :mod:`rnnkit.course` for the course's own API.
``model.save(path)`` and :func:`load` keep any layer or model in one safetensors file.
"""

from .layers import Dropout, Embedding, Linear
from .models import LanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from .module import Module, inference_mode, load
from .parallel import num_threads, set_num_threads
from .recurrent import GRU, LSTM, RNN, RNNBase
from .train import TrainConfig, train
from .version import __version__

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Dropout",
    "Embedding",
    "LanguageModel",
    "Linear",
    "Module",
    "RNNBase",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
    "TrainConfig",
    "__version__",
    "inference_mode",
    "load",
    "num_threads",
    "set_num_threads",
    "train",
]
