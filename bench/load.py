"""Load generator: `wattpool bench` as a script (same options; see --help).

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1 --rate 100 \
        --requests 3000 --duration 30 --json bench/out/load.json

Open-loop Poisson arrivals (--rate) or fixed concurrency (--concurrency), streamed or
not, bounded by --requests and --duration; loopback targets only unless --allow-remote.
The code is in src/wattpool/benchtools/.
"""

from __future__ import annotations

import typer

from wattpool.cli_bench import bench

if __name__ == "__main__":
    typer.run(bench)
