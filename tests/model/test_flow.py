"""Flow matching: the solvers land on the target of a known exact velocity field; the time
grid and the loss follow the rectified-flow convention (t = 0 data, t = 1 noise)."""
from __future__ import annotations

import pytest
import torch

from model.flow import flow_error, noisy, shift_time, solve, timesteps


def exact_field(target: tuple[torch.Tensor, ...]):
    """For a single target x*, the straight path x_t = (1 - t) x* + t eps has v = (x_t - x*) / t."""
    def v(x, t):
        return tuple((xi - ti) / t.view(-1, *[1] * (xi.dim() - 1)) for xi, ti in zip(x, target))
    return v


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps,shift", [pytest.param(1, 1.0, id="steps=1,shift=1"),
                                         pytest.param(4, 3.0, id="steps=4,shift=3"),
                                         pytest.param(7, 0.5, id="steps=7,shift=0.5")])
def test_solver_lands_on_target_of_exact_velocity_field(solver: str, steps: int, shift: float) -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64))
    noise = tuple(torch.randn(x.shape, generator=g, dtype=torch.float64) for x in target)
    out = solve(exact_field(target), noise, steps, shift, solver)
    for o, t in zip(out, target):
        torch.testing.assert_close(o, t, atol=1e-9, rtol=0)


def test_solver_with_a_wrong_field_misses_the_target() -> None:
    target = (torch.ones(1, 3, dtype=torch.float64),)
    out = solve(lambda x, t: tuple(torch.zeros_like(xi) for xi in x), (torch.zeros(1, 3, dtype=torch.float64),), 4, 1.0)
    assert not torch.allclose(out[0], target[0])


def test_time_grid_runs_from_noise_to_data_and_shift_moves_it_towards_noise() -> None:
    plain, shifted = timesteps(4, 1.0), timesteps(4, 3.0)
    assert plain[0] == shifted[0] == 1.0 and plain[-1] == shifted[-1] == 0.0
    assert all(a > b for a, b in zip(shifted, shifted[1:]))
    assert all(s >= p for s, p in zip(shifted, plain))
    assert torch.allclose(shift_time(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        timesteps(0, 1.0)


def test_loss_is_zero_for_the_true_velocity_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(2, 6, 3, generator=g),), (torch.randn(2, 6, 3, generator=g),)
    t = torch.rand(2, generator=g)
    xt = noisy(x0[0], eps[0], t)
    torch.testing.assert_close(xt, (1 - t.view(2, 1, 1)) * x0[0] + t.view(2, 1, 1) * eps[0])
    assert flow_error((eps[0] - x0[0],), x0, eps).eq(0).all()
    assert flow_error((torch.zeros_like(x0[0]),), x0, eps).mean().item() > 0.5
