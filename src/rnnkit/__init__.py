"""rnnkit: recurrent neural networks from the equations, in NumPy.

The layers follow PyTorch's constructors, names and shapes; the cells follow the
notation of the Sequence Models course. See :mod:`rnnkit.course` for the course's own API.
"""

from .module import Module
from .recurrent import GRU, LSTM, RNN, RNNBase
from .version import __version__

__all__ = ["GRU", "LSTM", "RNN", "Module", "RNNBase", "__version__"]
