"""Shared pytest setup."""

import torch

# One intra-op thread: the suite runs beside Java (METEOR) and subprocesses on 2 cores, where
# oversubscribed OpenMP threads make small-tensor tests several times slower.
torch.set_num_threads(1)
