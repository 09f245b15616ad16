"""How a battery feeds the function under test: inputs in its library and dtype, outputs back as float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class RemoteOutput:
    """What the child reported about ``fn(X)``: library, dtype, device, shape, values."""

    def __init__(self, header: dict[str, Any], values: np.ndarray | None):
        self.library = str(header["library"])
        self.dtype = str(header["dtype"])
        self.device = str(header["device"])
        self.shape = tuple(int(d) for d in header["shape"])
        self.values = values
        self.values_error = str(header.get("values_error") or "")


class _Env:
    """Converts float64 numpy matrices to the function's input type and calls it."""

    def __init__(self, fn: Callable[..., Any] | None, backend: str, dtype: str, device: Any) -> None:
        self.fn = fn
        self.backend = backend
        self.dtype = dtype
        self.device = device
        if backend == "torch":
            try:
                self.tdtype = getattr(torch, dtype)
                assert isinstance(self.tdtype, torch.dtype) and self.tdtype.is_floating_point
            except (AttributeError, AssertionError):
                raise ValueError(f"dtype must name a torch floating dtype, got {dtype!r}") from None
            self.tdevice = torch.device(device)
            if self.tdevice.type == "meta":
                raise ValueError("device 'meta' holds no values; the battery needs a device with data (cpu, cuda)")
        else:
            if dtype == "bfloat16":
                raise ValueError("numpy has no bfloat16; use backend='torch' or dtype='float32'")
            try:
                self.ndtype = np.dtype(dtype)
            except TypeError:
                raise ValueError(f"dtype must name a numpy floating dtype, got {dtype!r}") from None
            if not np.issubdtype(self.ndtype, np.floating):
                raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
            if str(device) != "cpu":
                raise ValueError(f"backend='numpy' runs on device 'cpu', got device={device!r}")

        self.caller: Any = None
        self._after: np.ndarray | None = None

    def make(self, A: np.ndarray) -> Any:
        if self.backend == "torch":
            return torch.as_tensor(A, dtype=torch.float64).to(device=self.tdevice, dtype=self.tdtype)
        return np.asarray(A, dtype=np.float64).astype(self.ndtype)

    def call(self, X: Any) -> tuple[Any, str | None]:
        """``(fn(X), None)`` or ``(None, "fn raised ...")``; a timeout or a dead target raises."""
        if getattr(self.caller, "remote", False):  # a ProcessCaller: float64 values in, (out, err, after) back
            out, err, self._after = self.caller(_f64(X))
            return out, err
        self._after = None
        return self.caller(X)

    def input_after(self, X: Any) -> np.ndarray:
        """The input of the last call as the function left it (float64)."""
        return self._after if self._after is not None else _f64(X)


def _f64(X: Any) -> np.ndarray:
    """float64 numpy copy of an input or output (raises TypeError if not an array)."""
    if isinstance(X, RemoteOutput):
        if X.values is None:
            raise TypeError(X.values_error or f"output is a {X.library}, not an array")
        return X.values
    if isinstance(X, torch.Tensor):
        return X.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(X, np.ndarray):
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"output has dtype {X.dtype}")
        return X.astype(np.float64)
    raise TypeError(f"output is a {type(X).__name__}, not an array")


def _lib_dtype_device(X: Any) -> tuple[str, str, str]:
    if isinstance(X, RemoteOutput):
        return X.library, X.dtype, X.device
    if isinstance(X, torch.Tensor):
        return "torch", str(X.dtype).removeprefix("torch."), str(X.device)
    if isinstance(X, np.ndarray):
        return "numpy", str(X.dtype), "cpu"
    return type(X).__name__, "?", "?"


def _norm_device(d: torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>`` so that ``cuda`` and ``cuda:0`` compare equal."""
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return d
