"""Requests and states of sweeps that grow: an extension by N samples, and adaptive stopping."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from orchestrator.models import Request

MAX_EXTENSION = 1_000_000


class SweepExtend(Request):
    samples: int = Field(..., ge=1, le=MAX_EXTENSION,
                         description="design samples to add (base points for a saltelli design)")


class Until(Request):
    """Keep extending a sweep by `batch` samples until the confidence interval of a statistic
    of one output is narrow enough, or `max_samples` is reached."""

    output: str = Field(..., min_length=1, description="the output column the statistic is of")
    statistic: Literal["mean", "quantile", "sobol"] = Field(
        "mean", description="'mean', 'quantile' (give `quantile`), or 'sobol': each first-order "
        "Sobol index of a saltelli design")
    quantile: float | None = Field(None, gt=0, lt=1, description="which quantile, e.g. 0.95")
    rel_ci_half_width: float = Field(
        ..., gt=0, le=10, description="stop once the interval's half-width is at most this share of "
        "the estimate (for Sobol indices, which lie in [0, 1]: at most this, absolute)")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    batch: int = Field(..., ge=1, le=MAX_EXTENSION, description="samples added per round")
    max_samples: int = Field(..., ge=1, description="never more samples than this in all")

    @model_validator(mode="after")
    def _quantile_given(self) -> Until:
        if (self.statistic == "quantile") != (self.quantile is not None):
            raise ValueError("quantile: give it with statistic 'quantile' (and only then)")
        return self


class UntilState(BaseModel):
    """Where an adaptive sweep stands: growing, or why it stopped growing."""

    state: Literal["growing", "converged", "max_samples", "stopped", "failed"]
    reason: str | None = None
    samples: int = Field(0, description="design samples so far")
    runs_used: int = Field(0, description="completed runs the last estimate used")
    estimate: float | list[float] | None = None
    ci_low: float | list[float] | None = None
    ci_high: float | list[float] | None = None
    rel_half_width: float | None = Field(None, description="the last interval's half-width / |estimate|")
