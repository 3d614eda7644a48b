"""rnnkit: recurrent neural networks from the equations, in NumPy.

The layers follow PyTorch's constructors, names and shapes; the cells follow the
notation of the Sequence Models course. See :mod:`rnnkit.course` for the course's own API.
"""

from .module import Module
from .parallel import num_threads, set_num_threads
from .recurrent import GRU, LSTM, RNN, RNNBase
from .version import __version__

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Module",
    "RNNBase",
    "__version__",
    "num_threads",
    "set_num_threads",
]
