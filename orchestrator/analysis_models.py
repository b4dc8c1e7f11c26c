"""What a sweep's sensitivity analysis answers (GET /sweeps/{id}/analysis), shared by the
server and the Python API, which must not import the server to read it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class VariableSensitivity(BaseModel):
    """How one output depends on one variable. A figure that cannot be computed is null, and
    `note` says why (text values, constant over the runs used...)."""

    variable: str
    pearson: float | None = Field(None, description="Pearson correlation with the output")
    spearman: float | None = Field(None, description="Spearman rank correlation with the output")
    src: float | None = Field(
        None, description="standardised regression coefficient: the linear fit's coefficient "
                          "with every numeric variable and the output scaled to unit variance")
    s1: float | None = Field(None, description="first-order Sobol index (saltelli design)")
    s1_conf: float | None = Field(None, description="half-width of s1's confidence interval")
    st: float | None = Field(None, description="total Sobol index (saltelli design)")
    st_conf: float | None = Field(None, description="half-width of st's confidence interval")
    note: str | None = None


class SweepAnalysis(BaseModel):
    sweep_id: str
    output: str = Field(..., description="the output analysed, as the runs reported it")
    design: str | None = None
    runs: int = Field(..., description="runs in the sweep")
    runs_used: int = Field(..., description="COMPLETED runs with a numeric value of the output: "
                                            "those the correlations and regression use")
    left_out: dict[str, int] = Field(default_factory=dict,
                                     description="runs not used, counted by the reason why")
    r2: float | None = Field(None, description="R² of the linear fit behind the src coefficients")
    regression_error: str | None = Field(None, description="why there is no linear fit (then src "
                                                           "and r2 are null)")
    conf_level: float = Field(..., description="confidence level of s1_conf and st_conf")
    sobol_error: str | None = Field(
        None, description="why the Sobol indices are missing: not a saltelli design, or runs of "
                          "its matrix that failed, are unfinished or lack a numeric output")
    variables: list[VariableSensitivity]
