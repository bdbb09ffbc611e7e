"""Metric tables that carry their provenance: which estimators and versions made the numbers, the
alignment, the sample counts and the warnings (peers' numbers are often irreproducible for lack of them).

A ``MetricTable`` is one table of the report (rows of plain values) plus a ``provenance`` dict:
``evaluator_versions()`` (library versions), each estimator's own record (e.g.
``IdentityFeatures.provenance``: estimator name, model file and sha256 prefix, alignment), sample counts,
and ``warnings`` such as FID on too few frames. JSON and CSV writers keep both together: the CSV gets the
provenance as ``# key: value`` comment lines above the header.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from pipeline.evaluate.distributions import FID_MIN_STABLE_SAMPLES

# Packages whose versions change the numbers (dlib: the identity network's runtime; opencv: DIS flow and
# warping; scipy: sqrtm in FID); dlib ships as the dlib-bin wheel.
VERSIONED_PACKAGES = (
    "numpy",
    "scipy",
    "torch",
    "opencv-python-headless",
    "opencv-python",
    "dlib-bin",
    "dlib",
)


def evaluator_versions() -> dict[str, str]:
    """{package: version} of the installed packages of ``VERSIONED_PACKAGES`` (absent ones left out), plus
    the Python version."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python numbers, NaN to None, dataclasses and tuples unpacked."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


@dataclasses.dataclass(frozen=True)
class MetricTable:
    """One table of results with its provenance.

    name: the table's name ("self_reenactment", "identity", ...); rows: one mapping per row (an identity,
    a method), plain values; provenance: estimators, versions, alignment, sample counts; warnings: lines a
    reader must see (e.g. "FID on 480 frames (< 1000): unstable").
    """

    name: str
    rows: tuple[Mapping[str, Any], ...]
    provenance: Mapping[str, Any]
    warnings: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """Column names in first-seen order over the rows."""
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def as_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "name": self.name,
                "rows": list(self.rows),
                "provenance": self.provenance,
                "warnings": self.warnings,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False)

    def to_csv(self) -> str:
        """The rows as CSV, after ``# key: value`` lines holding the provenance (JSON values) and warnings."""
        out = io.StringIO()
        plain = self.as_dict()
        out.write(f"# table: {self.name}\n")
        for key, value in plain["provenance"].items():
            out.write(f"# {key}: {json.dumps(value, sort_keys=True)}\n")
        for line in self.warnings:
            out.write(f"# warning: {line}\n")
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in plain["rows"]:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return out.getvalue()


def make_table(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    estimators: Mapping[str, Any] | None = None,
    alignment: str = "",
    sample_counts: Mapping[str, int] | None = None,
    warnings: Sequence[str] = (),
    **extra: Any,
) -> MetricTable:
    """A ``MetricTable`` whose provenance holds ``evaluator_versions()``, the estimators ({metric or
    estimator name: its provenance record}), the alignment sentence, the sample counts and any ``extra``
    entries (e.g. flow backend, mask threshold)."""
    provenance = {
        "versions": evaluator_versions(),
        "estimators": dict(estimators or {}),
        "alignment": alignment,
        "sample_counts": dict(sample_counts or {}),
        **extra,
    }
    return MetricTable(name, tuple(rows), provenance, tuple(warnings))


def fid_warnings(results: Mapping[str, Any]) -> list[str]:
    """Warning lines for the unstable FIDs (``FidResult.unstable``): {label: FidResult} -> lines such as
    "FID pooled on 480 frames (< 1000): unstable, do not rank by it"."""
    return [
        f"FID {label} on {min(r.count_a, r.count_b)} frames (< {FID_MIN_STABLE_SAMPLES}): unstable, "
        "do not rank by it"
        for label, r in results.items()
        if r.unstable
    ]
