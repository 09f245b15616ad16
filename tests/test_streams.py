"""Tests for diagnostics.streams: reproducibility, recurrences, recorded steps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diagnostics import streams as gs

TINY = {
    "teacher_student": {"d_in": 24, "d_out": 12, "batch": 16},
    "mlp": {"sizes": (12, 24, 16, 4), "batch": 32, "teacher_width": 8, "lr": 3e-3},
    "transformer": {"d_model": 16, "heads": 2, "feedforward": 32, "vocab": 6, "seq_len": 5, "batch": 16, "lr": 1e-2},
}
SHAPES = {
    "teacher_student": {"weight": (12, 24)},
    "mlp": {"fc1.weight": (24, 12), "fc2.weight": (16, 24), "fc3.weight": (4, 16)},
    "transformer": {
        "block.self_attn.in_proj_weight": (48, 16),
        "block.self_attn.out_proj.weight": (16, 16),
        "block.linear1.weight": (32, 16),
        "block.linear2.weight": (16, 32),
    },
}


def tiny_stream(kind: str, steps: int = 30, **options) -> gs.GradientStream:
    return gs.gradient_stream(kind, steps, **{**TINY[kind], **options})


@pytest.mark.parametrize("kind", list(TINY))
def test_reproducible_bit_for_bit_and_seed_dependent(kind):
    first = tiny_stream(kind, steps=15, record_steps=[3, 14], seed=5)
    second = tiny_stream(kind, steps=15, record_steps=[3, 14], seed=5)
    other = tiny_stream(kind, steps=15, record_steps=[3, 14], seed=6)
    np.testing.assert_array_equal(first.losses, second.losses)
    for a, b, c in zip(first, second, other):
        assert (a.step, a.name) == (b.step, b.name) == (c.step, c.name)
        for field in ("G", "M", "V"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(a.G, c.G)


@pytest.mark.parametrize("kind", list(TINY))
def test_recorded_steps_names_and_shapes(kind):
    stream = tiny_stream(kind, steps=12, record_steps=[11, 0, 4, 4])
    assert stream.record_steps == (0, 4, 11)
    assert stream.names == tuple(SHAPES[kind])
    assert [(s.step, s.name) for s in stream] == [(step, name) for step in (0, 4, 11) for name in SHAPES[kind]]
    for sample in stream:
        for matrix in (sample.G, sample.M, sample.V):
            assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float64
            assert matrix.shape == SHAPES[kind][sample.name]
        assert np.all(sample.V >= 0)
    assert stream.losses.shape == (12,) and np.all(np.isfinite(stream.losses))


def test_default_records_only_the_last_step():
    stream = tiny_stream("teacher_student", steps=7)
    assert stream.record_steps == (6,) and [s.step for s in stream] == [6]


@pytest.mark.parametrize("kind", list(TINY))
def test_momentum_and_second_moment_obey_their_recurrences(kind):
    steps, beta1, beta2 = 8, 0.9, 0.8
    stream = tiny_stream(kind, steps=steps, record_steps=range(steps), beta1=beta1, beta2=beta2)
    for name in stream.names:
        samples = stream.select(name=name)
        assert [s.step for s in samples] == list(range(steps))
        momentum = np.zeros_like(samples[0].G)
        second_moment = np.zeros_like(samples[0].G)
        for sample in samples:
            momentum = beta1 * momentum + sample.G
            second_moment = beta2 * second_moment + (1 - beta2) * sample.G * sample.G
            np.testing.assert_allclose(sample.M, momentum, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(sample.V, second_moment, rtol=1e-12, atol=1e-300)
        assert stream.beta1 == beta1 and stream.beta2 == beta2


@pytest.mark.parametrize(
    "kind, steps, options",
    [
        ("teacher_student", 60, {"lr": 1e-2}),
        ("teacher_student", 60, {"optimizer": "sgd", "lr": 0.05}),
        ("mlp", 60, {"lr": 1e-2}),
        ("transformer", 100, {}),
    ],
)
def test_loss_decreases(kind, steps, options):
    losses = tiny_stream(kind, steps=steps, **options).losses
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()


def test_momentum_spectrum_is_steeper_than_gaussian():
    stream = gs.teacher_student_stream(60, d_in=64, d_out=32, batch=32, input_power=1.5)
    momentum = stream[0].M
    gaussian = np.random.default_rng(0).standard_normal(momentum.shape)

    def top_over_median(matrix: np.ndarray) -> float:
        sv = np.linalg.svd(matrix, compute_uv=False)
        return sv[0] / np.median(sv)

    assert top_over_median(momentum) > 2 * top_over_median(gaussian)


def test_torch_backend_equals_numpy_and_respects_dtype():
    as_numpy = tiny_stream("mlp", steps=5, record_steps=[4])
    as_torch = tiny_stream("mlp", steps=5, record_steps=[4], backend="torch")
    as_float32 = tiny_stream("mlp", steps=5, record_steps=[4], backend="torch", dtype="float32")
    for a, b, c in zip(as_numpy, as_torch, as_float32):
        assert isinstance(b.M, torch.Tensor) and b.M.dtype == torch.float64
        assert c.V.dtype == torch.float32
        np.testing.assert_array_equal(b.M.numpy(), a.M)
        np.testing.assert_array_equal(c.V.numpy(), a.V.astype(np.float32))


def test_recorded_arrays_are_snapshots_not_views():
    stream = tiny_stream("teacher_student", steps=4, record_steps=[1, 2])
    first, second = stream.select(step=1)[0], stream.select(step=2)[0]
    assert not np.shares_memory(first.M, second.M)
    assert not np.array_equal(first.M, second.M)


def test_record_selects_matrices_and_get_finds_a_sample():
    stream = tiny_stream("mlp", steps=3, record_steps=[1, 2], record=["fc2.weight"])
    assert stream.names == ("fc2.weight",) and len(stream) == 2
    assert stream.get("fc2.weight", 2).step == 2
    with pytest.raises(KeyError, match="no sample"):
        stream.get("fc1.weight", 2)


def test_global_torch_state_is_left_alone():
    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    for kind in TINY:
        tiny_stream(kind, steps=2)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads


def test_progress_bar_can_be_turned_on(capsys):
    tiny_stream("teacher_student", steps=3, progress=True)
    assert "teacher_student" in capsys.readouterr().err


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: tiny_stream("teacher_student", steps=5, record_steps=[5]), ValueError, "beyond"),
        (lambda: tiny_stream("teacher_student", steps=5, record_steps=[-1]), ValueError, ">= 0"),
        (lambda: tiny_stream("teacher_student", steps=0), ValueError, "steps must be >= 1"),
        (lambda: tiny_stream("teacher_student", steps=-3), ValueError, "steps must be >= 1"),
        (lambda: tiny_stream("teacher_student", steps=2.5), TypeError, "steps must be an int"),
        (lambda: gs.gradient_stream("resnet", 5), ValueError, "kind must be one of"),
        (lambda: tiny_stream("mlp", steps=2, record=["fc9.weight"]), ValueError, "cannot record"),
        (lambda: tiny_stream("mlp", steps=2, record=["fc1.bias"]), ValueError, "cannot record"),
        (lambda: tiny_stream("mlp", steps=2, sizes=(8,)), ValueError, "sizes"),
        (lambda: tiny_stream("mlp", steps=2, activation="swish"), ValueError, "activation"),
        (
            lambda: tiny_stream("teacher_student", steps=2, optimizer="lion"),
            ValueError,
            "optimizer",
        ),
        (lambda: tiny_stream("teacher_student", steps=2, beta2=1.0), ValueError, "beta2"),
        (lambda: tiny_stream("teacher_student", steps=2, beta1=-0.1), ValueError, "beta1"),
        (lambda: tiny_stream("teacher_student", steps=2, lr=0.0), ValueError, "lr"),
        (lambda: tiny_stream("teacher_student", steps=2, noise=-1.0), ValueError, "noise"),
        (lambda: tiny_stream("teacher_student", steps=2, backend="jax"), ValueError, "backend"),
        (lambda: tiny_stream("transformer", steps=2, heads=3), ValueError, "divisible"),
    ],
)
def test_bad_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()
