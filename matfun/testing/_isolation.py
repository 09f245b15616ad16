"""How :mod:`matfun.testing` calls the function under test: directly, in a worker
thread with a deadline, or in a child process that can be killed.

The child-process form is what makes a validation trustworthy against a target
that ends the process, hangs, monkeypatches the checker or forks: the child only
*computes* ``fn(X)`` for inputs the parent sends; the parent builds the inputs,
the references and every verdict itself.  A child can therefore not make a check
pass except by returning the right matrices.  Replies travel over a private pipe
as a JSON header plus raw float64 bytes (never pickle: the parent must not run
code the child chose), each carrying the request id and the child's pid.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from ._env import RemoteOutput

DEFAULT_TIMEOUT = 600.0
_MAX_HEADER = 1 << 16
_MAX_VALUES = 1 << 26  # 64 MiB, or twice the input's float64 bytes for larger user shapes


class BatteryTimeout(TimeoutError):
    """The function under test did not finish the battery within ``timeout`` seconds."""


class TargetError(ValueError):
    """A ``"module:function"`` target that cannot be imported or called."""


class TargetProcessError(RuntimeError):
    """The child process running the target ended or broke the protocol mid-battery."""


for _cls in (BatteryTimeout, TargetError, TargetProcessError):
    _cls.__module__ = "matfun.testing"


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else ""
    return f"fn raised {type(exc).__name__}: {msg}"[:200]


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return value


def _timeout_message(timeout: float | None, what: str) -> str:
    return f"the function under test did not finish the battery within timeout={timeout:g} s ({what})"


# --------------------------------------------------------------------- in-process


class DirectCaller:
    """``fn(X)`` in the calling thread; every exception but KeyboardInterrupt is a result."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn
        self.errstate = np.geterr()  # the caller's: the battery silences numpy for its own sums only

    def __call__(self, X: Any) -> tuple[Any, str | None]:
        try:
            with np.errstate(**self.errstate):
                return self.fn(X), None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. fail the check
            return None, describe_exception(exc)

    def close(self) -> None:
        pass


class ThreadCaller(DirectCaller):
    """``fn(X)`` in one daemon worker thread; the battery gives up at the deadline.

    A thread cannot be killed: after a timeout the call keeps running in the
    background (a ``"module:function"`` target runs in a process that is killed).
    The worker starts with the caller's autograd mode, torch thread count, numpy
    error state and CUDA device (other thread-local state, e.g. an autocast
    context, is not carried over).
    """

    def __init__(self, fn: Callable[[Any], Any], timeout: float):
        import torch

        super().__init__(fn)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
        device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self._thread = threading.Thread(
            target=self._work, args=(grad, threads, device), daemon=True, name="matfun.testing call"
        )
        self._thread.start()

    def _work(self, grad: bool, threads: int, device: int | None) -> None:
        import torch

        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)  # per-thread in OpenMP builds
        np.seterr(**self.errstate)
        if device is not None:
            torch.cuda.set_device(device)
        while (X := self._jobs.get()) is not None:
            try:
                self._results.put((self.fn(X), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._results.put((None, exc))

    def __call__(self, X: Any) -> tuple[Any, str | None]:
        self._jobs.put(X)
        try:
            out, exc = self._results.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            raise BatteryTimeout(_timeout_message(self.timeout, "the call is abandoned in a daemon thread")) from None
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        return (None, describe_exception(exc)) if exc is not None else (out, None)

    def close(self) -> None:
        self._jobs.put(None)


# ------------------------------------------------------------------ child process


def kill_process_tree(proc: Any) -> None:
    """Kill a child started by this module and everything it forked (it leads its own session)."""
    if proc.pid is not None:
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)


def _context() -> Any:
    """forkserver where available (one import of torch per session, not per target)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        from multiprocessing import forkserver

        preload = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or [])
        ctx.set_forkserver_preload(list(dict.fromkeys([*preload, "matfun.testing"])))
        return ctx
    return multiprocessing.get_context("spawn")


class ProcessCaller:
    """Calls of ``module:function`` answered by a child process (see the module docstring)."""

    remote = True  # takes float64 values and returns (output, error, input after the call)

    def __init__(self, target: str, backend: str, dtype: str, device: str, timeout: float | None):
        import torch

        self.target, self.timeout = target, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        ctx = _context()
        self._conn, child_end = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=serve,
            args=(child_end, target, backend, dtype, device, torch.get_num_threads()),
            name="matfun.testing target",
        )
        self._proc.start()
        child_end.close()
        self._calls = 0
        try:
            ready = self._receive("importing the target")
        except BaseException:
            self.close()
            raise
        if ready.get("op") == "target_error":
            self.close()
            raise TargetError(str(ready.get("message", "bad target"))[:500])
        if ready.get("op") != "ready":
            self.close()
            raise TargetProcessError(f"target process sent {ready.get('op')!r} instead of 'ready'")

    # -- transport -------------------------------------------------------------
    def _wait(self, what: str) -> None:
        remaining = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        ready = multiprocessing.connection.wait([self._conn, self._proc.sentinel], remaining)
        if self._conn in ready:
            return
        if not ready:
            self.close()
            raise BatteryTimeout(_timeout_message(self.timeout, f"while {what}; the target process was killed"))
        self._died(what)

    def _died(self, what: str) -> NoReturn:
        self._proc.join(2.0)
        code = self._proc.exitcode
        self.close()
        if code is None:
            raise TargetProcessError(
                f"{self.target}: the target process closed its pipe while {what}; the battery did not complete"
            )
        hint = " (sys.exit()/os._exit() in the target?)" if code in (0, 1) else ""
        raise TargetProcessError(
            f"{self.target}: the target process ended with exit code {code} "
            f"while {what}{hint}; the battery did not complete"
        )

    def _recv(self, what: str, limit: int) -> bytes:
        self._wait(what)
        try:
            return self._conn.recv_bytes(limit)
        except (EOFError, OSError):
            self._died(what)

    def _receive(self, what: str) -> dict[str, Any]:
        raw = self._recv(what, _MAX_HEADER)
        try:
            header = json.loads(raw.decode("utf-8"))
            if not isinstance(header, dict) or header.get("pid") != self._proc.pid:
                raise ValueError(
                    f"reply from pid {header.get('pid') if isinstance(header, dict) else '?'}, "
                    f"not the target process {self._proc.pid} (did the target fork?)"
                )
        except ValueError as exc:
            self.close()
            raise TargetProcessError(f"{self.target}: malformed reply while {what}: {exc}") from None
        return header

    def _array(self, what: str, shape: tuple[int, ...], limit: int = _MAX_VALUES) -> np.ndarray:
        raw = self._recv(what, limit)
        if len(raw) != 8 * math.prod(shape):
            self.close()
            raise TargetProcessError(f"{self.target}: malformed reply while {what}: {len(raw)} bytes for {shape}")
        return np.frombuffer(raw, dtype=np.float64).reshape(shape).copy()

    # -- the call --------------------------------------------------------------
    def __call__(self, X64: np.ndarray) -> tuple[RemoteOutput | None, str | None, np.ndarray]:
        """``(output, error, input after the call)`` for the float64 values of one input."""
        self._calls += 1
        what = f"call {self._calls} of the function ({X64.shape[0]}x{X64.shape[1]} input)"
        try:
            self._conn.send_bytes(json.dumps({"op": "call", "id": self._calls, "shape": list(X64.shape)}).encode())
            self._conn.send_bytes(np.ascontiguousarray(X64, dtype=np.float64).tobytes())
        except (OSError, ValueError):
            self._wait(what)  # raises: the child is gone
        header = self._receive(what)
        try:
            if header.get("op") != "result" or header.get("id") != self._calls:
                raise ValueError(f"expected result {self._calls}, got {header.get('op')!r} {header.get('id')!r}")
            error = header.get("error")
            out = header.get("output")
            if error is not None:
                error = str(error)[:200]
            elif not isinstance(out, dict):
                raise ValueError("no output description")
        except (ValueError, KeyError, TypeError) as exc:
            self.close()
            raise TargetProcessError(f"{self.target}: malformed reply while {what}: {exc}") from None
        limit = max(_MAX_VALUES, 16 * X64.size)
        after = self._array(what, X64.shape, limit)
        if error is not None:
            return None, error, after
        assert isinstance(out, dict)  # checked above: no error means an output description
        try:
            values = self._array(what, tuple(int(d) for d in out["shape"]), limit) if out.get("has_values") else None
            return RemoteOutput(out, values), None, after
        except (ValueError, KeyError, TypeError) as exc:
            self.close()
            raise TargetProcessError(f"{self.target}: malformed reply while {what}: {exc}") from None

    def finish(self) -> None:
        """Ask the child to confirm the end of the battery; raise unless it does."""
        what = f"ending the battery after {self._calls} calls"
        try:
            self._conn.send_bytes(json.dumps({"op": "exit"}).encode())
        except (OSError, ValueError):
            self._wait(what)
        header = self._receive(what)
        if header.get("op") != "bye" or header.get("calls") != self._calls:
            self.close()
            raise TargetProcessError(f"{self.target}: the target process did not confirm the end of the battery")
        self.close()

    def close(self) -> None:
        """Kill the child and anything it forked (its own session); idempotent."""
        kill_process_tree(self._proc)
        self._conn.close()


def serve(conn: Any, target: str, backend: str, dtype: str, device: str, threads: int) -> None:
    """Child process: import ``target`` and answer call requests until told to exit.

    Whatever goes wrong here (a broken pipe in a process the target forked, a
    parent that went away) ends the process quietly: the parent reports it.
    """
    try:
        _serve(conn, target, backend, dtype, device, threads)
    except BaseException:  # noqa: BLE001
        os._exit(3)


def _serve(conn: Any, target: str, backend: str, dtype: str, device: str, threads: int) -> None:
    def send(header: dict[str, Any], *arrays: np.ndarray) -> None:
        conn.send_bytes(json.dumps({**header, "pid": os.getpid()}).encode())  # a fork replies with its own pid
        for array in arrays:
            conn.send_bytes(np.ascontiguousarray(array, dtype=np.float64).tobytes())

    try:
        os.setsid()  # its own session: the parent kills everything it forks
    except OSError:
        pass
    os.dup2(2, 1)  # the target's prints go to stderr, never near the parent's table
    import torch

    from ._env import _Env, _f64, _lib_dtype_device

    torch.set_num_threads(threads)
    try:
        env = _Env(None, backend, dtype, device)
        fn = _resolve_target(target)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() at import is a bad target too
        message = (
            exc.args[0]
            if isinstance(exc, TargetError)
            else (f"importing module {target.split(':')[0]!r} failed: {type(exc).__name__}: {exc}")
        )
        send({"op": "target_error", "message": " ".join(str(message).split())})
        os._exit(0)
    send({"op": "ready"})
    calls = 0
    while True:
        request = json.loads(conn.recv_bytes().decode())
        if request["op"] == "exit":
            send({"op": "bye", "calls": calls})
            os._exit(0)
        calls += 1
        shape = tuple(request["shape"])
        X = env.make(np.frombuffer(conn.recv_bytes(), dtype=np.float64).reshape(shape).copy())
        try:
            out, error = fn(X), None
        except BaseException as exc:  # noqa: BLE001 - reported, the parent fails the check
            out, error = None, describe_exception(exc)
        after = _f64(X)
        if error is not None:
            send({"op": "result", "id": request["id"], "error": error}, after)
            continue
        library, out_dtype, out_device = _lib_dtype_device(out)
        is_array = isinstance(out, (torch.Tensor, np.ndarray))
        description = {
            "library": library,
            "dtype": out_dtype,
            "device": out_device,
            "shape": [int(d) for d in out.shape] if is_array else [],
        }
        try:
            values = _f64(out)
        except Exception as exc:  # noqa: BLE001 - not an array of numbers
            send(
                {
                    "op": "result",
                    "id": request["id"],
                    "error": None,
                    "output": {**description, "has_values": False, "values_error": str(exc)},
                },
                after,
            )
            continue
        send(
            {
                "op": "result",
                "id": request["id"],
                "error": None,
                "output": {**description, "shape": list(values.shape), "has_values": True},
            },
            after,
            values,
        )


def _resolve_target(target: str) -> Callable[..., Any]:
    """Import ``module:attr[.attr...]`` (in the child) and return the callable."""
    import importlib

    module_name, attr_path = split_target(target)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise TargetError(f"cannot import module {module_name!r}: no module named {exc.name!r}") from None
        raise
    parts = attr_path.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = ".".join([module_name, *parts[:i]])
            raise TargetError(f"{where!r} has no attribute {part!r}") from None
    if not callable(obj):
        raise TargetError(f"{target!r} is not callable (it is a {type(obj).__name__})")
    return obj


def split_target(target: Any) -> tuple[str, str]:
    """``(module, attribute path)`` of ``"package.module:function"``; TargetError if malformed."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise TargetError(f"target must look like 'package.module:function', got {target!r}")
    module_name, attr_path = target.split(":")
    if not module_name or not all(p.isidentifier() for p in module_name.split(".")):
        raise TargetError(f"bad module name {module_name!r} in target {target!r} (want 'package.module:function')")
    if not all(p.isidentifier() for p in attr_path.split(".")):
        raise TargetError(f"bad attribute {attr_path!r} in target {target!r} (want 'package.module:function')")
    return module_name, attr_path
