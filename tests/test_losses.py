"""GLiP (eq. 6-8), the baselines, the "+gp" forms and the factory."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcore.losses import LOSS_NAMES, GLiPLoss, grid_penalty, make_loss, ot_term

T = 1 / math.sqrt(3)
LN2 = math.log(2)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# ---- reference implementations with explicit loops (independent of the code under test) ----


def _ref_ot(f: np.ndarray, h: np.ndarray) -> float:
    b_n, l_n = f.shape[:2]
    total = 0.0
    for i in range(l_n):
        hp = fp = hn = fn = 0.0
        for b in range(b_n):
            for v in itertools.product(*(range(n) for n in f.shape[2:])):
                hv, fv = h[(b, i, *v)], f[(b, i, *v)]
                hp += hv
                fp += hv * fv
                hn += 1 - hv
                fn += (1 - hv) * fv
        total += -fp / hp + fn / hn
    return float(total / (b_n * l_n))


def _edges(shape: tuple[int, ...], axis: int):  # type: ignore[no-untyped-def]
    for v in itertools.product(*(range(n) for n in shape)):
        if v[axis] + 1 < shape[axis]:
            u = list(v)
            u[axis] += 1
            yield v, tuple(u)


def _ref_penalty(f: np.ndarray, variant: str) -> float:
    b_n, l_n = f.shape[:2]
    spatial = f.shape[2:]
    if variant == "code":
        total = 0.0
        for axis in range(3):
            terms = [
                (abs(f[(b, i, *u)] - f[(b, i, *v)]) - T) ** 2
                for b in range(b_n)
                for i in range(l_n)
                for u, v in _edges(spatial, axis)
            ]
            total += sum(terms) / len(terms)
        return total
    per_sample = [
        sum(
            (abs(f[(b, i, *u)] - f[(b, i, *v)]) - 1.0) ** 2
            for axis in range(3)
            for i in range(l_n)
            for u, v in _edges(spatial, axis)
        )
        for b in range(b_n)
    ]
    return float(sum(per_sample) / b_n)


# ---- GLiP ----


def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    f = np.arange(8.0).reshape(1, 1, 2, 2, 2)  # f = 4z + 2y + x
    h = np.zeros_like(f)
    h[0, 0, 0, 0, 0] = 1.0
    h[0, 0, 1, 1, 1] = 0.5
    return _t(f), _t(h)


def test_ot_hand_example_batch_1() -> None:
    f, h = _hand_example()
    # positive mean (1*0 + 0.5*7) / 1.5 = 7/3; negative mean (1+...+6 + 0.5*7) / 6.5 = 49/13
    assert ot_term(f, h).item() == pytest.approx(49 / 13 - 7 / 3)


def test_penalty_hand_example_both_variants() -> None:
    f, _ = _hand_example()
    # |differences| are 1 along x, 2 along y, 4 along z, 4 edges each
    assert grid_penalty(f, "code").item() == pytest.approx(
        (1 - T) ** 2 + (2 - T) ** 2 + (4 - T) ** 2
    )
    assert grid_penalty(f, "paper").item() == pytest.approx(4 * 0 + 4 * 1 + 4 * 9)


def test_glip_hand_example_defaults_and_variants() -> None:
    f, h = _hand_example()
    ot = 49 / 13 - 7 / 3
    code = (1 - T) ** 2 + (2 - T) ** 2 + (4 - T) ** 2
    loss = GLiPLoss()
    assert loss.lam == 10.0 and loss.variant == "code"
    assert loss(f, h).item() == pytest.approx(ot + 10 * code)
    assert GLiPLoss(lam=2.0, variant="paper")(f, h).item() == pytest.approx(ot + 2 * 40)
    assert make_loss("ot")(f, h).item() == pytest.approx(ot)
    parts = loss.terms(f, h)
    assert parts["ot"].item() == pytest.approx(ot) and parts["penalty"].item() == pytest.approx(
        code
    )


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("n_l", [1, 2])
def test_glip_batch_3_matches_loop_reference(variant: str, n_l: int) -> None:
    rng = np.random.default_rng(n_l)
    f = rng.normal(0.0, 2.0, (3, n_l, 2, 2, 3))
    h = rng.uniform(0.0, 1.0, f.shape) ** 3
    want = _ref_ot(f, h) + 10 * _ref_penalty(f, variant)
    got = GLiPLoss(lam=10.0, variant=variant)(_t(f), _t(h)).item()  # type: ignore[arg-type]
    assert got == pytest.approx(want, rel=1e-10)
    # weights are pooled over the batch: not the mean of per-sample OT terms
    per_sample = np.mean([_ref_ot(f[b : b + 1], h[b : b + 1]) for b in range(3)]) / 3
    assert abs(ot_term(_t(f), _t(h)).item() - per_sample) > 1e-3


def test_penalty_averages_over_batch_in_both_variants() -> None:
    rng = np.random.default_rng(3)
    one = _t(rng.normal(size=(1, 2, 3, 2, 4)))
    three = one.repeat(3, 1, 1, 1, 1)
    for variant in ("code", "paper"):
        assert grid_penalty(three, variant).item() == pytest.approx(
            grid_penalty(one, variant).item()
        )


def test_penalty_is_zero_for_the_target_slope_and_skips_singleton_axes() -> None:
    z, y, x = torch.meshgrid(*(torch.arange(4.0, dtype=torch.float64),) * 3, indexing="ij")
    cone = -(z + y + x)[None, None]  # L1 cone side: every axis step is exactly 1
    assert grid_penalty(cone, "paper").item() == pytest.approx(0.0, abs=1e-12)
    assert grid_penalty(cone * T, "code").item() == pytest.approx(0.0, abs=1e-12)
    flat = torch.zeros(1, 1, 1, 1, 3, dtype=torch.float64)  # only x has edges
    assert grid_penalty(flat, "code").item() == pytest.approx(T**2)
    assert grid_penalty(flat, "paper").item() == pytest.approx(2.0)


@settings(max_examples=20, deadline=None)
@given(shift=st.floats(-1e3, 1e3), seed=st.integers(0, 10_000))
def test_glip_is_invariant_to_a_constant_shift(shift: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2, 3, 3, 4, 2, generator=g, dtype=torch.float64)
    h = torch.rand(f.shape, generator=g, dtype=torch.float64)
    loss = GLiPLoss()
    assert loss(f + shift, h).item() == pytest.approx(loss(f, h).item(), abs=1e-8)


# ---- baselines ----


def _pair(pred: list[float], target: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return _t(np.array(pred).reshape(1, 1, 1, 1, -1)), _t(np.array(target).reshape(1, 1, 1, 1, -1))


def test_wce_hand_values() -> None:
    # w = 1 - 0.5 = 0.5: both weights 1; p = 0.5 and 0.75
    p, h = _pair([0.0, math.log(3.0)], [1.0, 0.0])
    assert make_loss("wce")(p, h).item() == pytest.approx((LN2 + math.log(4.0)) / 2)
    # w = 1 - 0.25 = 0.75: positive weight 1.5, negative 0.5, all p = 0.5
    p, h = _pair([0.0] * 4, [1.0, 0.0, 0.0, 0.0])
    assert make_loss("wce")(p, h).item() == pytest.approx((1.5 + 3 * 0.5) * LN2 / 4)


def test_focal_hand_values() -> None:
    p, h = _pair([0.0, 0.0, 0.0], [1.0, 0.0, 0.5])
    # p = 0.5: 0.8*0.25*ln2, 0.2*0.25*ln2, 0.5*(0.8+0.2)*0.25*ln2
    want = (0.2 + 0.05 + 0.125) * LN2 / 3
    assert make_loss("focal")(p, h).item() == pytest.approx(want)
    # a confident right answer costs almost nothing: p = sigmoid(5)
    p, h = _pair([5.0], [1.0])
    q = 1 / (1 + math.exp(5.0))
    assert make_loss("focal")(p, h).item() == pytest.approx(-0.8 * q**2 * math.log(1 - q))


def test_regression_baselines_hand_values() -> None:
    p, h = _pair([0.0, math.log(3.0)], [1.0, 0.0])  # sigmoid = 0.5, 0.75
    assert make_loss("mse")(p, h).item() == pytest.approx((0.25 + 0.5625) / 2)
    assert make_loss("l1")(p, h).item() == pytest.approx((0.5 + 0.75) / 2)
    assert make_loss("smoothl1")(p, h).item() == pytest.approx((0.125 + 0.28125) / 2)


@pytest.mark.parametrize("name", ["wce", "focal"])
def test_logit_losses_stay_finite_for_huge_logits(name: str) -> None:
    p, h = _pair([1000.0, -1000.0, 1000.0], [0.0, 1.0, 1.0])
    p.requires_grad_(True)
    loss = make_loss(name)(p, h)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 100
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_gp_suffix_adds_lambda_times_code_penalty() -> None:
    f, h = _hand_example()
    code = (1 - T) ** 2 + (2 - T) ** 2 + (4 - T) ** 2
    for name in ("wce", "focal", "mse", "l1", "smoothl1"):
        base = make_loss(name)(f, h).item()
        assert make_loss(f"{name}+gp")(f, h).item() == pytest.approx(base + 10 * code)
        assert make_loss(f"{name}+gp", lam=1.0, variant="paper")(f, h).item() == pytest.approx(
            base + 40
        )


# ---- factory and validation ----


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_factory_name_gives_finite_gradients(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 4, 4, 4, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 4, 4, 4, generator=g) ** 4
    loss = make_loss(name)(pred, target)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert float(pred.grad.abs().sum()) > 0


def test_factory_names() -> None:
    assert {"glip", "wce", "focal", "mse", "l1", "smoothl1", "wce+gp", "smoothl1+gp"} <= set(
        LOSS_NAMES
    )
    assert isinstance(make_loss(" GLiP "), GLiPLoss)
    with pytest.raises(ValueError, match="valid names: glip"):
        make_loss("dice")
    with pytest.raises(ValueError, match="already includes"):
        make_loss("glip+gp")
    with pytest.raises(ValueError, match="variant"):
        make_loss("glip", variant="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lam"):
        GLiPLoss(lam=-1.0)


@pytest.mark.parametrize("name", ["glip", "wce", "mse+gp"])
def test_shape_errors(name: str) -> None:
    loss = make_loss(name)
    with pytest.raises(ValueError, match="5-D"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 2.0))
    with pytest.raises(ValueError, match="5-D"):
        grid_penalty(torch.zeros(2, 2, 2))


# ---- masking landmarks a case lacks ----

NAMES_VARIANTS = [(n, v) for n in LOSS_NAMES for v in ("code", "paper")]


def _masked_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred, target (2, 5, 4, 5, 6) and a mask where sample 1 lacks landmarks 3 and 4."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 5, 4, 5, 6, generator=g, dtype=torch.float64)
    target = torch.rand(2, 5, 4, 5, 6, generator=g, dtype=torch.float64) ** 4
    known = torch.ones(2, 5, dtype=torch.bool)
    known[1, 3:] = False
    return pred, target, known


def _loss_and_grad(
    name: str, variant: str, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    p = pred.clone().requires_grad_(True)
    loss = make_loss(name, variant=variant)(p, target, known)  # type: ignore[arg-type]
    loss.backward()
    assert p.grad is not None
    return loss.detach(), p.grad


@pytest.mark.parametrize(("name", "variant"), NAMES_VARIANTS)
def test_masked_landmark_gives_no_loss_and_no_gradient(name: str, variant: str) -> None:
    pred, target, known = _masked_batch()
    loss, grad = _loss_and_grad(name, variant, pred, target, known)
    # another target (even NaN) and another output on the unknown maps change nothing ...
    target2, pred2 = target.clone(), pred.clone()
    target2[1, 3] = 1.0 - target2[1, 3]
    target2[1, 4] = float("nan")
    pred2[1, 3:] = 5.0 * torch.randn(2, 4, 5, 6, dtype=torch.float64)
    loss2, grad2 = _loss_and_grad(name, variant, pred2, target2, known)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    # ... the unknown maps get no gradient, the known ones do
    assert float(grad[1, 3:].abs().max()) == 0.0
    assert float(grad[1, :3].abs().min(dim=0).values.max()) > 0
    # while without the mask the changed target does change the loss
    assert not torch.equal(
        _loss_and_grad(name, variant, pred, target, None)[0],
        _loss_and_grad(name, variant, pred, target2.nan_to_num(0.5), None)[0],
    )


@pytest.mark.parametrize(("name", "variant"), NAMES_VARIANTS)
def test_a_landmark_no_sample_knows_is_as_if_absent(name: str, variant: str) -> None:
    """Unknown everywhere = not there: it does not count in any average."""
    pred, target, _ = _masked_batch()
    known = torch.ones(2, 5, dtype=torch.bool)
    known[:, 4] = False
    masked = _loss_and_grad(name, variant, pred, target, known)[0]
    without = _loss_and_grad(name, variant, pred[:, :4], target[:, :4], None)[0]
    assert masked.item() == pytest.approx(without.item(), rel=1e-12)


@pytest.mark.parametrize(("name", "variant"), NAMES_VARIANTS)
def test_all_known_mask_is_exactly_the_unmasked_loss(name: str, variant: str) -> None:
    pred, target, _ = _masked_batch()
    all_known = torch.ones(2, 5, dtype=torch.bool)
    a, ga = _loss_and_grad(name, variant, pred, target, all_known)
    b, gb = _loss_and_grad(name, variant, pred, target, None)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_masked_ot_by_hand() -> None:
    """Sample 1 lacks landmark 1: landmark 1 pools sample 0 alone; 3 known pairs."""
    f = _t(np.array([[[[[1.0, 3.0]]], [[[2.0, 6.0]]]], [[[[5.0, 1.0]]], [[[9.0, 9.0]]]]]))
    h = _t(np.array([[[[[1.0, 0.0]]], [[[0.0, 1.0]]]], [[[[0.0, 1.0]]], [[[0.3, 0.3]]]]]))
    known = torch.tensor([[True, True], [True, False]])
    # landmark 0: pos = (1 + 1) / 2 = 1, neg = (3 + 5) / 2 = 4; landmark 1: pos 6, neg 2
    want = ((4 - 1) + (2 - 6)) / 3
    assert ot_term(f, h, known).item() == pytest.approx(want)


def test_mask_errors() -> None:
    pred, target, known = _masked_batch()
    with pytest.raises(ValueError, match=r"known must be \(B, L\)"):
        make_loss("glip")(pred, target, known[:, :3])
    with pytest.raises(ValueError, match="no landmark of the batch is known"):
        make_loss("mse")(pred, target, torch.zeros(2, 5, dtype=torch.bool))
