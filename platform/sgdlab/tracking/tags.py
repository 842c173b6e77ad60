"""Names of the records contract (DESIGN.md, "Records"); every reader and writer uses these."""

from __future__ import annotations

SWEEP = "sgdlab.sweep"
TRIAL_ID = "sgdlab.trial_id"
KIND = "sgdlab.kind"  # sweep | train | probe
ATTEMPT = "sgdlab.attempt"
OUTCOME = "sgdlab.outcome"  # converged | diverged | max_steps | error | duplicate
DUPLICATE = "duplicate"  # the outcome of a run that lost its trial's claim to another run (tracking/claims.py)
ERROR = "sgdlab.error"  # one line
HEARTBEAT = "sgdlab.heartbeat"  # unix seconds, refreshed while the trial runs
PACK = "sgdlab.pack"  # packed runs: id of the pack task attempt; a member's liveness is its pack's newest heartbeat
SUBMISSION = "sgdlab.submission"  # the driver command (one id per `sgdlab sweep` / `resubmit`) that made the run
SWEEP_FILE = "sgdlab.sweep_file"  # on the sweep run: the real path of the sweep file that defines the sweep
SWEEP_FILE_SHA256 = "sgdlab.sweep_file_sha256"  # and the sha256 of its bytes
GIT_SHA = "sgdlab.git_sha"
GIT_DIRTY = "sgdlab.git_dirty"
NODE = "sgdlab.node"  # where the trial ran: host/ip/ray-node-id from a Ray task, the hostname otherwise
PROBE_ID = "sgdlab.probe_id"  # identity of an end probe: trial + what is measured
TRAIN_RUN = "sgdlab.train_run"  # the train run whose checkpoint a probe measured
RESUMED_FROM = "sgdlab.resumed_from"  # run_id@step of the checkpoint a resumed attempt started from
NUMERICS = "sgdlab.numerics"  # the numerics version the run was computed with (sgdlab/numerics.py)
WORKERS = "sgdlab.workers"  # multi-worker trials: the number of data-parallel workers
# What a probe run measured (jobs/probe.py): the matrix, its normalization, the data, the product, the dtype
MATRIX = "sgdlab.matrix"  # full | ggn
NORMALIZATION = "sgdlab.normalization"
PROBE_DATA = "sgdlab.probe_data"
HVP_METHOD = "sgdlab.hvp_method"
PROBE_DTYPE = "sgdlab.probe_dtype"
# A view of a sweep's runs list stored on its experiment, which MLflow's UI loads from a URL that names it
# (`viewStateShareKey`, MLflow's "share view"): the key of the experiment tag is VIEW_TAG (tracking/store.py).
VIEW_KEY = "sgdlab-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # the sweep run's description

NAME_ABBREVIATIONS = {"model.alpha": "alpha", "optim.temperature": "T", "optim.lr": "lr",
                      "data.batch_size": "B", "data.n_train": "P"}


def one_line(exc: BaseException) -> str:
    """The `sgdlab.error` of an exception: its type and the first line of its message, at most 500 characters."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def run_name(swept: dict[str, str], shown: dict[str, str] | None = None) -> str:
    """Readable name from a trial's swept values, then the `shown` ones that are not swept, e.g.
    'alpha=4 T=0.001 seed=0 P=512'. A key is abbreviated (NAME_ABBREVIATIONS, else its last part) unless another
    key of the name has the same short form, or the short form is `seed` (the trial's own seed): `data.seed` is
    always 'data.seed=1'."""
    values = {**swept, **{k: v for k, v in (shown or {}).items() if k not in swept}}
    short = {k: NAME_ABBREVIATIONS.get(k, k.rsplit(".", 1)[-1]) for k in values}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1} | {"seed"}
    parts = [f"{k if short[k] in clash and k != 'seed' else short[k]}={v}" for k, v in values.items()]
    return " ".join(parts) or "trial"
