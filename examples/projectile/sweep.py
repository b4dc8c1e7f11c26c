"""The same study from Python: a Latin hypercube over speed and angle with uncertain drag,
a live progress bar, the results as a DataFrame and a bokeh plot of range vs angle
(range_vs_angle.html in the current folder).

    python examples/projectile/sweep.py                      # embedded: no server needed
    python examples/projectile/sweep.py http://127.0.0.1:8080  # against a running server
"""

import sys
from pathlib import Path

from orchestrator import Orchestrator, normal, uniform

HERE = Path(__file__).resolve().parent


def main() -> None:
    orch = Orchestrator.connect(sys.argv[1]) if len(sys.argv) > 1 else Orchestrator()
    with orch:
        sweep = orch.sweep(
            f"{sys.executable} simulate.py --speed ${{speed}} --angle ${{angle}}",
            files=[HERE / "simulate.py"],
            templates={"params/drag.cfg": HERE / "drag.cfg.tmpl"},
            variables={"speed": uniform(10, 50), "angle": uniform(10, 80),
                       "drag": normal(0.0013, 0.0002)},
            design="latin_hypercube", samples=64, seed=7, name="projectile-lhs",
        )
        sweep.wait(progress=True)
        table = sweep.results()
        print(table[["speed", "angle", "drag", "range_m", "peak_m"]].describe().round(3))
        best = table.loc[table["range_m"].idxmax()]
        print(f"longest flight: {best['range_m']:.1f} m at {best['speed']:.1f} m/s, {best['angle']:.1f} deg")
        plot(table, Path("range_vs_angle.html"))  # in the current folder


def plot(table, target: Path) -> None:
    from bokeh.io import output_file, save
    from bokeh.models import ColorBar, LinearColorMapper
    from bokeh.plotting import figure

    mapper = LinearColorMapper(palette="Viridis256", low=table["speed"].min(), high=table["speed"].max())
    fig = figure(title="Projectile range by launch angle (colour: speed)", x_axis_label="angle (deg)",
                 y_axis_label="range (m)", width=700, height=420)
    fig.scatter("angle", "range_m", source=table, size=8, color={"field": "speed", "transform": mapper})
    fig.add_layout(ColorBar(color_mapper=mapper, title="m/s"), "right")
    output_file(target, title="projectile sweep")
    save(fig)
    print(f"plot: {target}")


if __name__ == "__main__":
    main()
