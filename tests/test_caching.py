"""v2s_nb.caching: cache keys tell different inputs apart and stay the same for the same ones."""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from v2s_nb.caching import json_key


def _plain_key(obj) -> str:
    """The key json_key has always given to ordinary JSON values (existing cache entries are named by it)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def test_json_key_tells_large_numpy_arrays_apart():
    a = np.zeros((40, 50), np.float32)  # 2000 elements: str() shows only the corners
    b = a.copy()
    b[20, 25] = 1.0
    assert json_key({"masks": a}) != json_key({"masks": b})
    assert json_key({"w": np.float64([0.1])}) != json_key({"w": np.float64([0.1 + 1e-12])})  # str() rounds
    assert json_key({"m": np.zeros((2, 3))}) != json_key({"m": np.zeros((3, 2))})
    assert json_key({"m": np.zeros(3, np.float32)}) != json_key({"m": np.zeros(3, np.float64)})
    assert json_key({"masks": b}) == json_key({"masks": b.copy()})
    assert json_key({"t": b.T}) == json_key({"t": np.ascontiguousarray(b.T)})  # layout does not matter
    # ordinary JSON values (and other non-JSON values, taken as str) keep the keys they always had
    plain = {"steps": 3, "lr": 0.01, "name": "x", "sizes": [1, 2.5, None, True], "nested": {"b": 1, "a": "2"}}
    assert json_key(plain) == _plain_key(plain)
    assert json_key({"p": Path("/tmp/x"), "s": np.float32(0.5)}) == _plain_key({"p": "/tmp/x", "s": "0.5"})


def test_json_key_tells_large_tensors_apart():
    a = torch.zeros(3, 1000)  # 3000 elements: str() abbreviates
    b = a.clone()
    b[1, 500] = 1.0
    assert json_key({"ws": a}) != json_key({"ws": b})
    assert json_key({"ws": a}) != json_key({"ws": a.double()})
    assert json_key({"ws": b}) == json_key({"ws": b.clone().requires_grad_()})
    assert json_key({"ws": a}) != json_key({"ws": a.numpy()})  # a tensor is not taken for an array
