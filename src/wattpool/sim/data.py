"""Reading the simulator's inputs from a data folder: the shipped fixtures or ../shared/data.

Two layouts are understood:

- *shared*: the folder has ``azure-llm-2023/``, ``request-length-samples/`` and
  ``greendcc-electricity-prices/`` as in ``../shared/data`` (the full data sets);
- *fixtures*: the small slices in ``wattpool/sim/fixtures`` (``manifest.json`` names them),
  which is what the tests and the default ``wattpool sim`` use.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from wattpool.sim.regions import BY_NAME

FIXTURES = Path(__file__).parent / "fixtures"
PRICE_WEEK_START = datetime(2023, 8, 7, tzinfo=UTC)  # the week the fixtures hold
PRICE_WEEK_HOURS = 168


@dataclass(frozen=True, slots=True)
class Trace:
    """Arrivals with their token counts, sorted by time."""

    t: np.ndarray  # seconds since the trace's first arrival
    prompt: np.ndarray  # prompt (context) tokens
    output: np.ndarray  # generated tokens
    every: int = 1  # one row kept in ``every`` (a thinned slice): the real rate is higher

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self.t) > 1 else 0.0

    @property
    def rate(self) -> float:
        """Arrivals per second of the real trace (undoing any thinning)."""
        return len(self.t) * self.every / max(self.duration_s, 1.0)


def is_shared_layout(root: Path) -> bool:
    return (root / "azure-llm-2023").is_dir()


def _rows(path: Path) -> Iterable[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header
        yield from reader


def _parse_azure_time(text: str) -> float:
    # "2023-11-16 18:17:03.9799600": seven fractional digits, which fromisoformat in 3.11
    # does not take; split the fraction off.
    whole, _, frac = text.partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def read_trace(path: Path, every: int = 1) -> Trace:
    """An Azure trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens) or a fixture slice
    (t, prompt, output)."""
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    t: list[float] = []
    p: list[int] = []
    o: list[int] = []
    azure = header[0] == "TIMESTAMP"
    for row in _rows(path):
        t.append(_parse_azure_time(row[0]) if azure else float(row[0]))
        p.append(int(row[1]))
        o.append(int(row[2]))
    if not t:
        raise ValueError(f"{path}: no rows")
    ta = np.array(t)
    order = np.argsort(ta, kind="stable")
    ta = ta[order] - ta[order[0]]
    return Trace(ta, np.array(p)[order], np.array(o)[order], every)


def read_lengths(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, output tokens) samples: the request-length-samples CSVs or the fixture
    (first two columns either way)."""
    prompt: list[int] = []
    output: list[int] = []
    for row in _rows(path):
        prompt.append(int(float(row[0])))
        output.append(int(float(row[1])))
    if not prompt:
        raise ValueError(f"{path}: no rows")
    return np.array(prompt), np.array(output)


def _hour_utc(text: str, region: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # naive: local time per the region's file (see regions.py)
        moment = (moment - timedelta(hours=BY_NAME[region].utc_offset_h)).replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def read_price_file(path: Path, region: str) -> dict[datetime, float]:
    """One GreenDCC processed file -> {UTC hour: USD/MWh}; the first value of a repeated
    hour wins (the AU files repeat month boundaries)."""
    rate = BY_NAME[region].usd_per_unit
    out: dict[datetime, float] = {}
    for row in _rows(path):
        if len(row) < 2 or not row[1]:
            continue
        out.setdefault(_hour_utc(row[0], region), float(row[1]) * rate)
    return out


def _series(points: dict[datetime, float], start: datetime, hours: int) -> np.ndarray:
    """Hourly values from ``start``, carrying the last known value over gaps."""
    values = np.empty(hours)
    last = next(iter(points.values())) if points else 0.0
    for h in range(hours):
        last = points.get(start + timedelta(hours=h), last)
        values[h] = last
    return values


def read_prices(root: Path, regions: Sequence[str], start: datetime = PRICE_WEEK_START,
                hours: int = PRICE_WEEK_HOURS) -> dict[str, np.ndarray]:
    """Hourly USD/MWh per region from ``start`` (UTC), from either layout."""
    out: dict[str, np.ndarray] = {}
    if is_shared_layout(root):
        base = root / "greendcc-electricity-prices" / "processed"
        for region in regions:
            points: dict[datetime, float] = {}
            for year in sorted({start.year, (start + timedelta(hours=hours)).year}):
                path = base / region / f"{region}_electricity_prices_{year}.csv"
                if path.exists():
                    points.update(read_price_file(path, region))
            if not points:
                raise FileNotFoundError(f"no price file for {region} in {base}")
            out[region] = _series(points, start, hours)
        return out
    manifest = read_manifest(root)
    per_region: dict[str, dict[datetime, float]] = {r: {} for r in regions}
    for row in _rows(root / manifest["prices"]["file"]):
        region = row[1]
        if region in per_region:
            moment = datetime.fromisoformat(row[0]).astimezone(UTC)
            per_region[region][moment] = float(row[2])
    for region, points in per_region.items():
        if not points:
            raise ValueError(f"the price fixture has no {region}")
        out[region] = _series(points, start, hours)
    return out


def read_manifest(root: Path) -> dict[str, dict[str, object]]:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class DataSet:
    """Everything the workload and the fleet need, read from one folder."""

    chat: Trace
    code: Trace
    lengths: tuple[np.ndarray, np.ndarray]
    root: Path

    def prices(self, regions: Sequence[str], start: datetime = PRICE_WEEK_START,
               hours: int = PRICE_WEEK_HOURS) -> dict[str, np.ndarray]:
        return read_prices(self.root, regions, start, hours)


def load(root: Path | None = None) -> DataSet:
    """Read a data folder (default: the shipped fixtures)."""
    root = Path(root) if root is not None else FIXTURES
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if is_shared_layout(root):
        azure = root / "azure-llm-2023"
        return DataSet(
            chat=read_trace(azure / "AzureLLMInferenceTrace_conv.csv"),
            code=read_trace(azure / "AzureLLMInferenceTrace_code.csv"),
            lengths=read_lengths(root / "request-length-samples"
                                 / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"),
            root=root,
        )
    manifest = read_manifest(root)

    def trace(key: str) -> Trace:
        entry = manifest[key]
        return read_trace(root / str(entry["file"]), int(entry.get("every", 1)))  # type: ignore[call-overload]

    return DataSet(chat=trace("azure_conv"), code=trace("azure_code"),
                   lengths=read_lengths(root / str(manifest["lengths"]["file"])), root=root)
