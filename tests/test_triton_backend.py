"""The Triton backend of the NS maps, run on CPU tensors by Triton's interpreter.

Every test here sets ``TRITON_INTERPRET=1`` for its own duration (fixture below);
matfun decorates its kernels when they are first launched and decorates them
again if the setting has changed since, so the variable need not be set before
the test process starts.  Sizes stay small: the interpreter runs each program
of a launch in Python.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import matfun
from matfun import _triton_ns


def cuda(test):
    """A test of the compiled kernels: needs a GPU, runs without the interpreter."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(autouse=True)
def interpreter(monkeypatch, request):
    """The interpreter for CPU tests; compiled kernels for the CUDA ones."""
    if request.node.get_closest_marker("cuda"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel(X, Y):
    X, Y = torch.as_tensor(X).double(), torch.as_tensor(Y).double()
    return float(torch.linalg.norm(X - Y) / torch.linalg.norm(Y))


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# float32: the kernels and torch sum the same products in another order.  A
# perturbation grows by at most a ≈ 3.44 per Jordan step (the slope of p at 0),
# so 5 steps keep it within 3.44⁵·(few eps) ≈ 1e-4 relative (eps = 1.2e-7).
FLOAT32_TOLERANCE = 1e-4


def assert_agrees(got, want, exact, precision):
    """Agreement to the dtype's tolerance.

    float32: :data:`FLOAT32_TOLERANCE`.  bfloat16 (native or emulated): rounding
    flips of single bf16 ulps (2^-8) are amplified by the later steps, so the two
    engines agree only as well as either agrees with the exact (float64) map:
    the distance between them must stay below twice the reference's own error.
    """
    if precision == "float32":
        assert rel(got, want) <= FLOAT32_TOLERANCE
    else:
        assert rel(got, want) <= 2 * rel(want, exact)


@pytest.mark.parametrize(
    "shape, precision",
    [
        ((40, 72), "float32"),
        ((40, 72), "bfloat16-emulated"),
        ((40, 72), "bfloat16"),  # bfloat16 storage in and out of the kernel
        ((72, 40), "float32"),  # tall: the kernel runs the transpose
        ((2, 3, 24, 16), "float32"),  # a batch, each matrix normalised on its own
    ],
)
def test_full_newton_schulz_fused_kernel(shape, precision):
    G = randn(*shape, seed=1)
    got = matfun.newton_schulz(G, 5, "jordan", precision, backend="triton")
    want = matfun.newton_schulz(G, 5, "jordan", precision, backend="torch")
    exact = matfun.newton_schulz(G.double(), 5, "jordan")
    assert got.shape == G.shape and got.dtype == G.dtype
    assert_agrees(got, want, exact, precision)


@pytest.mark.parametrize("precision", ["float32", "bfloat16-emulated"])
def test_full_newton_schulz_symmetric_gram_path(precision):
    """Sides above the fused limit: steps whose X Xᵀ and b A + c A² come from the Gram kernel."""
    G = randn(150, 136, seed=2)  # tall, R = 136 is not a multiple of the 64 block
    got = matfun.newton_schulz(G, 3, "polar_express", precision, backend="triton")
    want = matfun.newton_schulz(G, 3, "polar_express", precision, backend="torch")
    exact = matfun.newton_schulz(G.double(), 3, "polar_express")
    assert_agrees(got, want, exact, precision)


def test_gram_kernel_is_alpha_xxt_plus_beta_c0():
    X = randn(2, 70, 45, seed=3)
    M = randn(2, 70, 70, seed=4)
    C0 = M + M.mT  # exactly symmetric
    precision = matfun._backend.resolve_precision("float32", X)
    A = _triton_ns.gram(X, precision, alpha=-0.5, beta=2.0, C0=C0)
    want = -0.5 * X @ X.mT + 2.0 * C0
    assert torch.allclose(A, want, rtol=1e-5, atol=1e-5)
    # blocks below the diagonal are the stored transposes of those above (64-blocks)
    assert torch.equal(A[:, 64:, :64], A[:, :64, 64:].mT)


@pytest.mark.parametrize(
    "tile, precision",
    [(32, "float32"), (32, "bfloat16-emulated"), ((40, 16), "float32"), ((16, 40), "float32")],
)
def test_tiled_ragged_tiles_one_launch(tile, precision):
    """A 50 × 70 matrix: interior, right-edge, bottom-edge and corner tiles in one launch."""
    G = randn(50, 70, seed=4)
    got = matfun.tiled_newton_schulz(G, tile, 5, "jordan", precision, backend="triton")
    want = matfun.tiled_newton_schulz(G, tile, 5, "jordan", precision, backend="torch")
    exact = matfun.tiled_newton_schulz(G.double(), tile, 5, "jordan")
    assert_agrees(got, want, exact, precision)


def test_tiled_iterates_end_at_the_output():
    G = randn(50, 70, seed=5)
    m = matfun.Tiled(matfun.NewtonSchulz(3, "you", backend="triton"), 32)
    reference = matfun.Tiled(matfun.NewtonSchulz(3, "you", backend="torch"), 32)
    iterates = list(m.iterates(G))
    assert len(iterates) == 4
    assert torch.equal(iterates[-1], m(G))
    for got, want in zip(iterates, reference.iterates(G)):
        assert rel(got, want) <= FLOAT32_TOLERANCE


def test_tiled_many_with_several_tile_shapes():
    """Cross-layer batching: tiles of several shapes (and a tall layer) in one call."""
    mats = [randn(40, 72, seed=6), randn(72, 40, seed=7), randn(33, 33, seed=8), randn(2, 16, 50, seed=9)]
    got = matfun.tiled_newton_schulz_many(mats, 32, backend="triton")
    want = matfun.tiled_newton_schulz_many(mats, 32, backend="torch")
    for g, w in zip(got, want):
        assert rel(g, w) <= FLOAT32_TOLERANCE


def test_large_tiles_take_the_stepwise_path():
    G = randn(20, 300, seed=10)  # tile side 256 > fused limit: groups of 20×256 and 20×44
    got = matfun.tiled_newton_schulz(G, 256, backend="triton")
    want = matfun.tiled_newton_schulz(G, 256, backend="torch")
    assert rel(got, want) <= FLOAT32_TOLERANCE


def test_numpy_input():
    G = np.random.default_rng(11).standard_normal((24, 40)).astype(np.float32)
    got = matfun.newton_schulz(G, backend="triton")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert rel(got, matfun.newton_schulz(G, backend="torch")) <= FLOAT32_TOLERANCE


def test_auto_stays_on_torch_for_cpu_tensors():
    G = randn(24, 40, seed=12)
    assert torch.equal(matfun.newton_schulz(G), matfun.newton_schulz(G, backend="torch"))


def test_cpu_tensor_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        matfun.newton_schulz(randn(8, 8), backend="triton")


def test_float64_is_refused_by_the_triton_backend():
    with pytest.raises(ValueError, match="backend='triton' supports precision"):
        matfun.tiled_newton_schulz(randn(8, 8, dtype=torch.float64), 4, backend="triton")


# ------------------------------------------------------------- compiled kernels on a GPU


@cuda
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "bfloat16-emulated"])
@pytest.mark.parametrize("tile", [128, 256, None])  # fused tiles, stepwise tiles, full NS (Gram kernel)
def test_cuda_kernels_agree_with_the_torch_path(precision, tile):
    G = randn(2, 300, 200, seed=13).cuda()
    if tile is None:
        run = lambda X, backend, p=precision: matfun.newton_schulz(X, 5, "jordan", p, backend=backend)  # noqa: E731
    else:
        run = lambda X, backend, p=precision: matfun.tiled_newton_schulz(X, tile, 5, "jordan", p, backend=backend)  # noqa: E731
    got = run(G, "triton")
    assert got.device == G.device and got.dtype == G.dtype
    exact = run(G.double().cpu(), "torch", None)
    assert_agrees(got.cpu(), run(G, "torch").cpu(), exact, precision)


@cuda
def test_cuda_fused_kernel_memory():
    """The fused kernel keeps tiles on chip: the only allocation is the output."""
    G = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    m = matfun.Tiled(matfun.NewtonSchulz(5, backend="triton"), 128)
    m(G)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    m(G)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= G.numel() * G.element_size() + 2**20


# ------------------------------------------- GPU code generation, checked without a GPU


def _signature(kernel, pointers, floats, constexprs):
    names = kernel.arg_names
    sig = dict.fromkeys(names, "i32")
    sig.update(pointers)
    sig.update(dict.fromkeys(floats, "fp32"))
    sig.update(dict.fromkeys(constexprs, "constexpr"))
    return sig


@pytest.mark.parametrize(
    "kernel, pointer_type, constexprs",
    [
        ("ns_tiles_kernel", "*bf16", {"BR": 128, "BS": 128, "NORMALIZE": True, "ROUND_BF16": True, "BF16_DOT": True}),
        ("gram_kernel", "*bf16", {"BM": 64, "BK": 32, "HAS_C0": True, "ROUND_BF16": True, "BF16_DOT": True}),
    ],
)
def test_kernels_compile_for_h100(monkeypatch, kernel, pointer_type, constexprs):
    """The GPU-only branches (bfloat16 tensor-core dots) compile to sm_90 code within shared memory.

    Compiles through Triton's whole pipeline (PTX and cubin) for an H100 target;
    no GPU is needed (about a second each; the float32 128-tile, 192 KiB of shared
    memory, takes half a minute and is left out).
    """
    pytest.importorskip("triton.backends.nvidia")
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    from triton import compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = _triton_ns._kernels()
    fn = getattr(module, kernel)
    pointers = {n: pointer_type for n in fn.arg_names if n.endswith("_ptr")}
    pointers.update({n: "*fp32" for n in ("coef_ptr",) if n in fn.arg_names})
    pointers.update({n: "*i32" for n in ("pairs_ptr",) if n in fn.arg_names})
    floats = [n for n in ("factor", "alpha", "beta") if n in fn.arg_names]
    source = ASTSource(fn, _signature(fn, pointers, floats, constexprs), constexprs=constexprs)
    compiled = compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert "cubin" in compiled.asm
    assert compiled.metadata.shared <= 227 * 2**10  # H100's opt-in shared memory per block


def test_auto_falls_back_to_torch_once_when_a_kernel_cannot_run(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from matfun import _triton_ns

    monkeypatch.setattr(_triton_ns, "_auto_failure", None)

    def fail():
        raise OutOfResources(196608, 101376, "shared memory")

    with pytest.warns(RuntimeWarning, match="uses torch from now on"):
        assert _triton_ns.guarded("auto", fail, lambda: "torch result") == "torch result"
    assert "OutOfResources" in _triton_ns._auto_failure
    X = torch.ones(4, 4)
    assert not _triton_ns.use_triton("auto", X, matfun._backend.resolve_precision("float32", X))
    with pytest.raises(OutOfResources):  # an explicit request is never silently replaced
        _triton_ns.guarded("triton", fail, lambda: "torch result")

    def bug():
        raise ZeroDivisionError("a bug, not the device")

    with pytest.raises(ZeroDivisionError):  # only Triton's own errors fall back
        _triton_ns.guarded("auto", bug, lambda: "torch result")
