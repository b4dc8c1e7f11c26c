"""The same study from Python: a Latin hypercube over speed and angle with uncertain drag,
a live progress bar, the results as a DataFrame and a bokeh plot of range vs angle coloured by
speed (range_vs_angle.html in the current folder: a standalone page that opens offline) and
the parallel coordinates of every variable and output (parallel.html).

    python examples/projectile/sweep.py                      # embedded: no server needed
    python examples/projectile/sweep.py http://127.0.0.1:8080  # against a running server
"""

import sys
from pathlib import Path

from orchestrator import Orchestrator, normal, uniform
from orchestrator.plots import save_html

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
        figure = sweep.plot(x="angle", y="range_m", color="speed")  # a bokeh figure (inline in Jupyter)
        print(f"plot: {save_html(figure, Path('range_vs_angle.html'))}")  # in the current folder
        print(f"plot: {save_html(sweep.plot_parallel(color='range_m'), Path('parallel.html'))}")


if __name__ == "__main__":
    main()
