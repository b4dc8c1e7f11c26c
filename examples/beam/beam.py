"""A cantilever beam under a tip load, as a structural code would report it: a log with the
tip deflection, a CSV of the deflection along the beam, and a JSON summary of stresses.

None of it is outputs.json: the sweep in spec.yaml declares which numbers to read from which
file (a regex in the log, a CSV cell, a JSON path), and the orchestrator reads them on the
worker after each run.

    python beam.py --load 500 --length 2.0 --modulus 200e9
"""

import argparse
import json

WIDTH, HEIGHT = 0.05, 0.10  # a 50 mm x 100 mm rectangular section
POINTS = 11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=float, required=True, help="tip load, N")
    parser.add_argument("--length", type=float, required=True, help="m")
    parser.add_argument("--modulus", type=float, required=True, help="Young's modulus, Pa")
    args = parser.parse_args()
    inertia = WIDTH * HEIGHT**3 / 12
    stiffness = args.modulus * inertia
    tip = args.load * args.length**3 / (3 * stiffness)
    with open("solver.log", "w") as log:
        log.write(f"cantilever: L = {args.length} m, E = {args.modulus:g} Pa, I = {inertia:.6e} m^4\n")
        log.write("solving ... converged\n")
        log.write(f"tip deflection = {tip:.9e} m\n")
    with open("deflection.csv", "w") as table:
        table.write("x_m,deflection_m\n")
        for i in range(POINTS):
            x = args.length * i / (POINTS - 1)
            w = args.load * x**2 * (3 * args.length - x) / (6 * stiffness)
            table.write(f"{x:.6f},{w:.9e}\n")
    moment = args.load * args.length
    stress = moment * (HEIGHT / 2) / inertia
    with open("summary.json", "w") as summary:
        json.dump({"root": {"moment_Nm": moment, "stress_Pa": stress}, "units": "SI"}, summary)


if __name__ == "__main__":
    main()
