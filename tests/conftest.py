"""Test-session settings: one torch thread per pytest-xdist worker (`make test` runs 2 workers on 2 cores;
more threads than cores makes every torch op slower), unless VIVA_TEST_THREADS says otherwise."""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("VIVA_TEST_THREADS", "1")))
