"""SophiaG (methods/sophia.py): the hand-computed update, the per-coordinate bound, decoupled decay, GNB mode."""

from __future__ import annotations

import pytest
import torch

from methods.sophia import SophiaG


def _step(optimizer: SophiaG, param: torch.nn.Parameter, grad: list[float]) -> None:
    param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()


class TestHandComputedStep:
    def test_two_steps_match_the_formula(self):
        """theta = [1, -2, 0.5], g = [2, -0.1, 0], lr 0.1, betas (0.9, 0.95), rho 0.04, bs 100 (rho*bs = 4), wd 0.1.

        Step 1: h = 0.05 g^2 = [0.2, 5e-4, 0];  m = 0.1 g = [0.2, -0.01, 0]
                ratio = min(|m| / (4 h + eps), 1) = [0.2 / 0.8, min(0.01 / 0.002, 1), 0 / eps] = [0.25, 1, 0]
                theta = 0.99 theta - 0.1 sign(m) ratio = [0.99 - 0.025, -1.98 + 0.1, 0.495] = [0.965, -1.88, 0.495]
        Step 2 (same g): h_1 = 0.95 * 0.2 + 0.05 * 4 = 0.39;  m_1 = 0.9 * 0.2 + 0.1 * 2 = 0.38
                theta_1 = 0.99 * 0.965 - 0.1 * 0.38 / 1.56 = 0.95535 - 0.0243590 = 0.9309910
        """
        param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        optimizer = SophiaG([param], lr=0.1, betas=(0.9, 0.95), rho=0.04, weight_decay=0.1, bs=100)
        _step(optimizer, param, [2.0, -0.1, 0.0])
        torch.testing.assert_close(param.detach(), torch.tensor([0.965, -1.88, 0.495], dtype=torch.float64))
        state = optimizer.state[param]
        torch.testing.assert_close(state["hessian"], torch.tensor([0.2, 5e-4, 0.0], dtype=torch.float64))
        torch.testing.assert_close(state["exp_avg"], torch.tensor([0.2, -0.01, 0.0], dtype=torch.float64))
        _step(optimizer, param, [2.0, -0.1, 0.0])
        assert param[0].item() == pytest.approx(0.99 * 0.965 - 0.1 * 0.38 / 1.56, rel=1e-12)

    def test_defaults_are_souls(self):
        param = torch.nn.Parameter(torch.zeros(2))
        group = SophiaG([param]).param_groups[0]
        assert group["betas"] == (0.9, 0.95) and group["rho"] == 0.04 and group["bs"] == 5120
        assert group["weight_decay"] == 0.1 and group["eps"] == 1e-15


class TestBoundedStep:
    def test_every_coordinate_moves_at_most_lr_times_one_plus_decay(self):
        """|theta' - theta| <= lr * (1 + weight_decay * |theta|) per coordinate, per step, whatever the gradient:
        the clipped term contributes at most lr, the decoupled decay lr * wd * |theta|."""
        torch.manual_seed(0)
        lr, wd = 0.01, 0.1
        param = torch.nn.Parameter(torch.randn(500, dtype=torch.float64) * 3)
        optimizer = SophiaG([param], lr=lr, weight_decay=wd, rho=1e-6)  # tiny rho: the clip is always active
        for scale in (1e-6, 1.0, 1e6, 1e12):
            before = param.detach().clone()
            _step(optimizer, param, (torch.randn(500) * scale).tolist())
            delta = (param.detach() - before).abs()
            assert torch.all(delta <= lr * (1 + wd * before.abs()) + 1e-12)
            assert delta.max() > 0.5 * lr  # the bound is attained, not vacuous

    def test_flat_curvature_gives_a_sign_step_of_exactly_lr(self):
        param = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
        optimizer = SophiaG([param], lr=0.05, weight_decay=0.0, rho=1e-9)
        _step(optimizer, param, [3.0, -1e-3])
        torch.testing.assert_close(param.detach(), torch.tensor([-0.05, 0.05]))


class TestDecoupledWeightDecay:
    def test_zero_gradient_only_shrinks_the_weights(self):
        param = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
        optimizer = SophiaG([param], lr=0.1, weight_decay=0.5)
        _step(optimizer, param, [0.0, 0.0])
        torch.testing.assert_close(param.detach(), torch.tensor([2.0, -4.0]) * (1 - 0.1 * 0.5))

    def test_decay_does_not_enter_the_moments(self):
        """AdamW-style: decay acts on theta directly, so m and h see only the loss gradient."""
        states = []
        for wd in (0.0, 0.3):
            param = torch.nn.Parameter(torch.tensor([5.0, -5.0]))
            optimizer = SophiaG([param], lr=0.1, weight_decay=wd)
            _step(optimizer, param, [1.0, 2.0])
            states.append(optimizer.state[param])
        torch.testing.assert_close(states[0]["exp_avg"], states[1]["exp_avg"])
        torch.testing.assert_close(states[0]["hessian"], states[1]["hessian"])


class TestHessianEstimators:
    def test_gnb_step_leaves_h_alone_and_update_hessian_folds_in_grad_squared(self):
        param = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        optimizer = SophiaG([param], lr=0.1, betas=(0.9, 0.5), hessian_estimator="gnb")
        _step(optimizer, param, [2.0, 4.0])
        torch.testing.assert_close(optimizer.state[param]["hessian"], torch.zeros(2))
        param.grad = torch.tensor([2.0, -4.0])  # the gradient of the loss on model-sampled labels
        optimizer.update_hessian()
        torch.testing.assert_close(optimizer.state[param]["hessian"], torch.tensor([2.0, 8.0]))  # 0.5 * g^2
        _step(optimizer, param, [1.0, 1.0])
        torch.testing.assert_close(optimizer.state[param]["hessian"], torch.tensor([2.0, 8.0]))

    def test_ema_grad2_refreshes_h_at_every_step(self):
        param = torch.nn.Parameter(torch.tensor([1.0]))
        optimizer = SophiaG([param], betas=(0.9, 0.5))
        _step(optimizer, param, [2.0])
        _step(optimizer, param, [4.0])
        torch.testing.assert_close(optimizer.state[param]["hessian"], torch.tensor([0.5 * 0.5 * 4 + 0.5 * 16]))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.9)}, "betas"),
        ({"rho": -0.1}, "rho"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"bs": 0}, "bs"),
        ({"eps": 0.0}, "eps"),
        ({"hessian_estimator": "fisher"}, "hessian_estimator"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SophiaG([torch.nn.Parameter(torch.zeros(1))], **kwargs)
