"""What a sweep's report reads from the store beyond the run records: metric histories and spectral densities."""

from __future__ import annotations

from sgdlab.analysis.spectra import read_density
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.histories import metric_histories
from sgdlab.tracking.query import RunRecord


def report_inputs(uri: str, trains: list[RunRecord], probes: list[RunRecord]) -> tuple[dict, dict, list[str]]:
    """What the curvature figures need beyond the run records: sharpness, train loss and batch sharpness (at the
    run's own B, as `batch_sharpness`) histories of the train runs that logged a sharpness, and the spectral
    densities of finished probes that computed one (probe.slq_starts > 0). Returns (histories, densities, warnings
    about unreadable densities)."""
    with_sharpness = [r for r in trains if r.status == "FINISHED" and "sharpness" in r.metrics]
    own_batch = {r.run_id: f"batch_sharpness/B{r.params.get('data.batch_size')}" for r in with_sharpness}
    histories = metric_histories(uri, list(own_batch), ["sharpness", "train_loss", *sorted(set(own_batch.values()))])
    for run_id, key in own_batch.items():
        if key in histories.get(run_id, {}):
            histories[run_id]["batch_sharpness"] = histories[run_id].pop(key)
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
