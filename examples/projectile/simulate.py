"""A small physics-like simulation: a projectile with quadratic air drag.

Integrates the flight of a ball launched at `--speed` m/s and `--angle` degrees, with a drag
coefficient read from the rendered template `params/drag.cfg`, and writes its scalar results
to outputs.json (which the orchestrator puts into the sweep's results table) and the whole
trajectory to trajectory.csv (kept as an output file).

    python simulate.py --speed 30 --angle 45
"""

import argparse
import json
import math


def read_config(path: str) -> dict[str, float]:
    config = {}
    with open(path) as handle:
        for line in handle:
            key, _, value = line.partition("=")
            if value.strip():
                config[key.strip()] = float(value)
    return config


def fly(speed: float, angle_deg: float, drag: float, mass: float, dt: float = 1e-3):
    """Explicit Euler on x'' = -k/m |v| vx, y'' = -g - k/m |v| vy; stops at the ground."""
    g = 9.81
    x, y = 0.0, 0.0
    vx, vy = speed * math.cos(math.radians(angle_deg)), speed * math.sin(math.radians(angle_deg))
    t, peak, path = 0.0, 0.0, [(0.0, 0.0, 0.0)]
    while y >= 0.0:
        v = math.hypot(vx, vy)
        vx -= drag / mass * v * vx * dt
        vy -= (g + drag / mass * v * vy) * dt
        x, y, t = x + vx * dt, y + vy * dt, t + dt
        peak = max(peak, y)
        if len(path) < 10_000 and int(t / dt) % 20 == 0:
            path.append((round(t, 4), round(x, 4), round(max(y, 0.0), 4)))
    return {"range_m": x, "peak_m": peak, "flight_s": t, "impact_speed": math.hypot(vx, vy)}, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, required=True, help="launch speed, m/s")
    parser.add_argument("--angle", type=float, required=True, help="launch angle, degrees")
    parser.add_argument("--config", default="params/drag.cfg")
    args = parser.parse_args()
    config = read_config(args.config)
    results, path = fly(args.speed, args.angle, config["drag"], config["mass"])
    print(f"speed {args.speed:g} m/s, angle {args.angle:g} deg -> range {results['range_m']:.2f} m")
    with open("trajectory.csv", "w") as out:
        out.write("t,x,y\n" + "".join(f"{t},{x},{y}\n" for t, x, y in path))
    with open("outputs.json", "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()
