"""Upload the reliability application (zipped here, as a zip of modules) and run its entry
point against a server: the job fans its Monte Carlo samples out across the cluster.

    python examples/python-app/run.py http://127.0.0.1:8080 [--samples 2000000]
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

from orchestrator import Orchestrator

HERE = Path(__file__).resolve().parent


def zipped_package() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((HERE / "reliability").glob("*.py")):
            archive.write(path, f"reliability/{path.name}")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the orchestrator's URL")
    parser.add_argument("--samples", type=int, default=2_000_000)
    args = parser.parse_args()
    with Orchestrator.connect(args.url) as orch:
        binary = orch.upload_binary("reliability", zipped_package())
        print(f"uploaded reliability@{binary.version}")
        print("design stress:", orch.submit("reliability.montecarlo:design_stress", binaries=["reliability"],
                                            kwargs={"area_mm2": 400}).result(timeout=60))
        job = orch.submit("reliability.montecarlo:failure_probability", binaries=["reliability"],
                          kwargs={"samples": args.samples, "chunks": 20})
        result = job.result(timeout=600)
        print(f"probability of failure: {result['probability']:.2e} "
              f"(95 % CI {result['ci95_low']:.2e} .. {result['ci95_high']:.2e}, "
              f"{result['samples']} samples in {result['tasks']} tasks)")
        print(job.logs().strip())


if __name__ == "__main__":
    main()
