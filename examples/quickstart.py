"""A first look: run a stacked bidirectional LSTM forward and backward through time."""

import numpy as np

import rnnkit

rng = np.random.default_rng(0)
lstm = rnnkit.LSTM(input_size=8, hidden_size=16, num_layers=2, bidirectional=True, rng=rng)
x = rng.normal(size=(20, 4, 8)).astype(np.float32)  # (T, N, D), time-major
out, (h_n, c_n), cache = lstm.forward(x, lengths=[20, 13, 7, 1])  # out: (T, N, 2H)
dx, (dh0, dc0) = lstm.backward(np.ones_like(out), cache)  # BPTT; grads land in lstm.grads
print(lstm)
print("output", out.shape, "h_n", h_n.shape, "c_n", c_n.shape, "dx", dx.shape)
print("parameters:", lstm.num_parameters())
for name, grad in lstm.grads.items():
    print(f"  {name:24s} {str(grad.shape):10s} |grad| = {np.linalg.norm(grad):.4f}")
