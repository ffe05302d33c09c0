"""Conditional flow matching (rectified flow, v-prediction) and its few-step solvers.

Convention: t = 0 is clean data, t = 1 is noise; x_t = (1 - t) x0 + t eps and the velocity
is v = dx_t/dt = eps - x0. The solver integrates from t = 1 down to t = 0 on a time-shifted
grid t' = s t / (1 + (s - 1) t) (s > 1 spends more of the steps near the noise end).
Latents are tuples of tensors (video tokens, audio tokens) so both are denoised together.
Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

Latents = tuple[Tensor, ...]
VelocityFn = Callable[[Latents, Tensor], Latents]  # (x_t, t (B,)) -> v
Solver = Literal["euler", "heun"]


@dataclass(frozen=True)
class Rung:
    """One rung of the quality ladder: a legal solver configuration of the same weights.
    Fewer velocity evaluations cost less time and give a coarser sample."""
    steps: int
    solver: Solver = "euler"

    @property
    def evaluations(self) -> int:
        """Forwards of the resp tokens against the cache (Heun's last step is Euler)."""
        return self.steps if self.solver == "euler" else 2 * self.steps - 1

    def __str__(self) -> str:
        return f"{self.steps} {self.solver}"


def quality_ladder(steps: int, solver: Solver) -> tuple[Rung, ...]:
    """The preset's own configuration first (the top rung), then Euler from `steps` down to
    one step: each rung needs fewer evaluations than the one above it."""
    top = [Rung(steps, "heun")] if solver == "heun" and steps > 1 else []
    return tuple(top + [Rung(s, "euler") for s in range(steps, 0, -1)])


def shift_time(t: Tensor, shift: float) -> Tensor:
    return shift * t / (1 + (shift - 1) * t)


def timesteps(steps: int, shift: float) -> list[float]:
    """steps + 1 times from 1 to 0, shifted; Python floats (no device sync in the loop)."""
    if steps < 1:
        raise ValueError(f"solver steps must be >= 1, got {steps}")
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_time(grid, shift).tolist()


def _axpy(x: Latents, a: float, v: Latents) -> Latents:
    return tuple(xi + a * vi for xi, vi in zip(x, v))


def solve(velocity: VelocityFn, noise: Latents, steps: int, shift: float,
          solver: Solver = "euler") -> Latents:
    """Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data)."""
    B, device = noise[0].shape[0], noise[0].device
    t_dtype = torch.promote_types(noise[0].dtype, torch.float32)  # never coarser than fp32
    ts = timesteps(steps, shift)
    x = noise
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        dt = t_next - t_cur  # negative
        v = velocity(x, torch.full((B,), t_cur, device=device, dtype=t_dtype))
        if solver == "euler" or t_next == 0.0:
            x = _axpy(x, dt, v)  # Heun's last step is Euler (no velocity at t = 0 needed)
            continue
        x_pred = _axpy(x, dt, v)
        v_next = velocity(x_pred, torch.full((B,), t_next, device=device, dtype=t_dtype))
        x = _axpy(x, dt, tuple(0.5 * (a + b) for a, b in zip(v, v_next)))
    return x


def sample_train_time(batch: int, shift: float, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> Tensor:
    """Training times: logit-normal, then the same shift as the solver's grid."""
    u = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    return shift_time(u, shift)


def noisy(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps, t broadcast from the leading dimensions of x0."""
    t = t.reshape(t.shape + (1,) * (x0.dim() - t.dim()))
    return (1 - t) * x0 + t * eps


def flow_error(v_pred: Latents, x0: Latents, eps: Latents) -> Tensor:
    """Each unit's mean squared error against the rectified-flow target eps - x0: latents
    (B, N, ...) -> (B, N)."""
    num = sum(((vp.float() - (e - x).float()) ** 2).flatten(2).sum(-1) for vp, x, e in zip(v_pred, x0, eps))
    return num / sum(x[0, 0].numel() for x in x0)
