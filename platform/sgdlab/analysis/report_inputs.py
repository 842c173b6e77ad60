"""What a sweep's report reads from the store beyond the run records: metric histories and spectral densities."""

from __future__ import annotations

from sgdlab.analysis.spectra import read_density
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.histories import metric_histories
from sgdlab.tracking.query import RunRecord


def report_inputs(uri: str, trains: list[RunRecord], probes: list[RunRecord]) -> tuple[dict, dict, list[str]]:
    """What the curvature figures need beyond the run records: sharpness (and train loss) histories of the train
    runs that logged a sharpness, and the spectral densities of finished probes that computed one (probe.slq_starts
    > 0). Returns (histories, densities, warnings about unreadable densities)."""
    with_sharpness = [r.run_id for r in trains if r.status == "FINISHED" and "sharpness" in r.metrics]
    histories = metric_histories(uri, with_sharpness, ["sharpness", "train_loss"])
    densities, warnings = {}, []
    for record in probes:
        if record.status != "FINISHED" or record.params.get("probe.slq_starts", "1") in ("0", "None", ""):
            continue
        data = download_bytes(uri, record.run_id, "spectrum/density.csv")
        if data is None:
            continue
        try:
            densities[record.run_id] = read_density(data)
        except (ValueError, UnicodeDecodeError) as exc:
            warnings.append(f"probe run {record.run_id}: spectrum/density.csv not read ({exc})")
    return histories, densities, warnings
