"""Fleet files of the benchmarks: the seed's shape (orgs rise and bair, each org's own
credential and namespace, tier policy enforced) stretched to N clusters.

The sandbox is brought up with the largest one (`up --fleet`), so every cluster hosts both
orgs; the smaller ones are its prefixes and use the same contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SEED = Path(__file__).resolve().parents[1] / "dags" / "fleet.yaml"


def cluster_names(n: int) -> list[str]:
    """rise, bair, then p3, p4, ... (the names part (c) uses too)."""
    return ["rise", "bair", *(f"p{i}" for i in range(3, n + 1))][:n]


def fleet_dict(names: list[str], rise_owns: tuple[str, ...] = ("rise",)) -> dict[str, Any]:
    """The seed fleet's defaults and policy, with `names` as its clusters: rise owns those in
    `rise_owns`, bair every other one (so rise's work is owner there, borrower elsewhere)."""
    seed = yaml.safe_load(SEED.read_text())
    return {**seed, "clusters": [
        {"name": n, "owner": "rise" if n in rise_owns else "bair", "context": f"{n}-operator",
         "cost_per_gpu_hour": 0.35} for n in names]}


def write(names: list[str], directory: Path, rise_owns: tuple[str, ...] = ("rise",),
          stem: str = "fleet") -> Path:
    """The fleet of `names` as a file (the sandbox and the operator read files)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{len(names)}.yaml"
    path.write_text(yaml.safe_dump(fleet_dict(names, rise_owns), sort_keys=False))
    return path
