"""Load generation and measurement for benchmarks (`wattpool bench`, bench/*.py).

Not used by the pool itself. Everything here sends load only to loopback addresses
unless told otherwise (see ``target.check_target``).
"""

from wattpool.benchtools.report import summarize, table
from wattpool.benchtools.runner import LoadResult, LoadSpec, RequestResult, run_load
from wattpool.benchtools.schedule import poisson_arrivals
from wattpool.benchtools.stats import Distribution, describe, percentile
from wattpool.benchtools.target import TargetRefused, check_target, is_loopback_host

__all__ = [
    "Distribution",
    "LoadResult",
    "LoadSpec",
    "RequestResult",
    "TargetRefused",
    "check_target",
    "describe",
    "is_loopback_host",
    "percentile",
    "poisson_arrivals",
    "run_load",
    "summarize",
    "table",
]
