"""Experiment tracking in MLflow: the one module of the project that imports MLflow (tests/test_layout.py).

A ``Tracker`` is one MLflow run, addressed by its run id through ``mlflow.MlflowClient``; nothing here
touches MLflow's global active run, so a tracker works the same in a Ray worker, and a run started in one
process can be the parent of runs made in others (``parent_run_id``), which ``mlflow.start_run(nested=True)``
cannot do. Only rank 0 of a job tracks; the other ranks hold a ``NullTracker`` with the same methods.

Where runs go (``resolve_tracking_uri``): ``TrackingConfig.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
else the caller's default, normally ``local_store_uri(<job output folder>)``: a SQLite file beside the
outputs, with the artifacts of its experiments in ``mlartifacts/`` beside that file. MLflow 3 refuses a
plain-folder store (``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true``, and SQLite needs no server. A
SQLite file is for one process on one machine: jobs whose workers run on several machines log to a tracking
server (``mlflow server --backend-store-uri sqlite:///... --artifacts-destination s3://...
--serve-artifacts``: artifacts go through the server, so workers need no artifact-store credentials).

Tracking never stops training. The first call that fails (server unreachable, an error answer) prints ONE
line, ``MLflow tracking at <uri> unreachable: <reason>; training continues without tracking``, and the
tracker turns itself off: every later call returns at once. Nothing a tracker sends or prints holds a
credential: inline ``user:password@`` in URIs is redacted (``infra.storage.redact``) and parameters or tags
whose key names a secret (``secret``, ``password``, ``token``, ``access_key``, ...) are not logged.

Why the HTTP limits are environment variables: MLflow reads its retry count, back-off and timeout only
from ``MLFLOW_HTTP_REQUEST_*`` at each request (``mlflow.utils.rest_utils.http_request``); the client has
no per-client setting. Its defaults (7 retries with exponential back-off, 120 s timeout) make an
unreachable server cost minutes. So each tracker call sets bounded values for its own duration, under a
lock, and restores the environment afterwards; a value the user exported wins over ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from infra import storage

RESUME_TAG = "head2head.resume_key"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under this parent
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
LOCAL_ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store's file

# MLflow's limits (mlflow.utils.validation): values longer than these are rejected, not cut.
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Key names that hold credentials; "token" only as a whole word, so "num_tokens" is still logged.
_SECRET_KEY = re.compile(
    r"secret|passw(or)?d|credential|access_?key|api_?key|private_?key|(^|[^a-z])token($|[^a-z])", re.I
)
_URI_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")  # MLflow keys: alphanumerics, _ - . space / :
_ENV_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Where and whether a job tracks.

    ``tracking_uri``: None -> ``$MLFLOW_TRACKING_URI`` if set, else the job's default (a SQLite store
    under its output folder). ``request_timeout_s`` / ``max_retries`` bound every call to a tracking
    server (so an unreachable one costs a few seconds); ``artifact_timeout_s`` is the socket timeout of
    artifact uploads, which the server answers only after storing the file (a checkpoint can be large).
    """

    tracking_uri: str | None = None
    experiment: str = "head2head"
    enabled: bool = True
    request_timeout_s: int = 5
    artifact_timeout_s: int = 600
    max_retries: int = 2


def local_store_uri(folder: str) -> str:
    """The embedded store of a job: ``sqlite:///<folder>/mlflow.db`` (artifacts in ``<folder>/mlartifacts``).

    ``folder`` must be local: SQLite cannot live on S3. A job writing to S3 sets a tracking server instead.
    """
    if not storage.is_local(folder):
        raise ValueError(
            f"{storage.redact(folder)}: the embedded MLflow store needs a local folder; "
            "set tracking.tracking_uri or $MLFLOW_TRACKING_URI to a tracking server"
        )
    return "sqlite:///" + os.path.join(storage.normalise(folder), "mlflow.db")


def resolve_tracking_uri(config: TrackingConfig, default_uri: str | None = None) -> str | None:
    """The URI runs go to: the config's, else ``$MLFLOW_TRACKING_URI``, else ``default_uri`` (None: none)."""
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri


def redact_text(text: str) -> str:
    """``text`` with the inline credentials of every URI in it removed (``infra.storage.redact``)."""
    return _URI_IN_TEXT.sub(lambda m: storage.redact(m.group(0)), text)


def is_secret_key(key: str) -> bool:
    """True for parameter/tag names that hold credentials (``aws_secret_access_key``, ``auth_token``)."""
    return bool(_SECRET_KEY.search(key.replace("-", "_")))


def flatten(mapping: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and dataclass instances -> one level, dotted keys: {"a": {"b": 1}} -> {"a.b": 1}.

    ``mapping`` may itself be a dataclass instance (a resolved job config)."""
    if dataclasses.is_dataclass(mapping) and not isinstance(mapping, type):
        mapping = dataclasses.asdict(mapping)
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _clean_key(key: str) -> str:
    """A key MLflow accepts: bad characters -> "_", no "..", "//" or leading "/", at most 250 chars."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    key = "/".join(part for part in key.split("/") if part not in ("", ".", ".."))
    return key[:MAX_KEY_CHARS] or "_"


def _clean_value(value: Any, limit: int) -> str:
    text = redact_text(value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean_items(mapping: Mapping[str, Any], limit: int) -> tuple[dict[str, str], list[str]]:
    """(key -> value safe to log, names of the keys dropped as secrets), after flattening."""
    kept, dropped = {}, []
    for key, value in flatten(mapping).items():
        if is_secret_key(key):
            dropped.append(key)
        else:
            kept[_clean_key(key)] = _clean_value(value, limit)
    return kept, dropped


def _reason(err: BaseException) -> str:
    """A short, redacted, one-line cause: the socket error where there is one ("[Errno 111] Connection
    refused"), else the message's first 300 characters."""
    text = " ".join(redact_text(str(err)).split())
    socket_error = re.search(r"\[Errno -?\d+\][^\"()]*", text)
    return socket_error.group(0).strip(" ,;") if socket_error else text[:300]


def _is_connection_error(err: BaseException) -> bool:
    """True when ``err`` (or what it wraps) is a network failure, not an answer from the server."""
    import requests

    network = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        ConnectionError,
        TimeoutError,
    )
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    return any(
        s in text for s in ("Failed to establish a new connection", "Max retries exceeded", "timed out")
    )


@contextlib.contextmanager
def _http_limits(timeout_s: int, max_retries: int) -> Iterator[None]:
    """Bounded MLflow HTTP retries/timeouts for the duration of one call (see the module docstring)."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s)),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # urllib3 sleeps 0, 2, 4 ... s between retries
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    }
    with _ENV_LOCK:
        ours = [key for key in wanted if key not in os.environ]
        os.environ.update({key: wanted[key] for key in ours})
        try:
            yield
        finally:
            for key in ours:
                os.environ.pop(key, None)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = os.path.join(os.path.dirname(uri[len("sqlite:///") :]), LOCAL_ARTIFACTS_DIR)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it in between
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _tag_filter(key: str, value: str) -> str:
    if "'" in value or "`" in key:
        raise ValueError(f"tag filters cannot hold quotes: {key}={value!r}")
    return f"tags.`{key}` = '{value}'"


class Tracker:
    """One MLflow run, addressed by id. Methods never raise for tracking failures (module docstring).

    ``default_uri``: the embedded store when neither the config nor the environment names one
    (``local_store_uri(out)``); with no URI at all the tracker is off and says so once.
    ``parent_run_id``: the run shows as a child of that run. ``resume_key``: if an active run of the
    experiment carries tag ``head2head.resume_key`` = this value, the tracker continues it (same run id,
    status RUNNING again, metrics appended) instead of creating a run; new runs get the tag.
    ``resume_existing=False`` always creates a run (still tagged): a job starting afresh in a folder whose
    earlier attempt left no checkpoint.
    """

    def __init__(
        self,
        config: TrackingConfig,
        run_name: str,
        *,
        default_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        resume_key: str | None = None,
        resume_existing: bool = True,
        log: Callable[[str], Any] = print,
    ):
        self.config = config
        self._resume_existing = resume_existing
        self._log = log
        self._uri = resolve_tracking_uri(config, default_uri)
        self._client: Any = None  # None until the run exists, and again once tracking is off
        self._run_id: str | None = None
        self._params: dict[str, str] = {}  # logged so far, to skip repeats and spot changes on resume
        self.resumed = False
        if resume_key is not None:
            _tag_filter(RESUME_TAG, resume_key)  # a bad key is the caller's bug: fail now
        if not config.enabled:
            return
        if self._uri is None:
            log("MLflow tracking off: no tracking URI (set tracking.tracking_uri or $MLFLOW_TRACKING_URI)")
            return
        self._call("start run", self._start, run_name, tags or {}, parent_run_id, resume_key, starting=True)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None when tracking is off or the run could not be created)."""
        return self._run_id

    @property
    def active(self) -> bool:
        """True while calls reach MLflow (False after ``end``, a failure, or when off)."""
        return self._client is not None and self._run_id is not None

    @property
    def tracking_uri(self) -> str | None:
        """The store's URI, redacted (safe to print)."""
        return None if self._uri is None else redact_text(self._uri)

    # -- logging -------------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Logs ``params`` (a mapping or dataclass; nested ones flattened to dotted keys) as strings.

        Values are redacted and cut to MLflow's limit; secret-named keys are dropped (listed in one line).
        MLflow keeps a parameter's first value: keys already logged with the same value are skipped, and
        changed ones (a resumed run with another config) are kept at the old value and listed in one line.
        """
        if not self.active:
            return
        kept, dropped = _clean_items(params, MAX_PARAM_VALUE_CHARS)
        if dropped:
            self._log(f"MLflow: not logging secret-looking params {sorted(dropped)}")
        changed = sorted(k for k, v in kept.items() if k in self._params and self._params[k] != v)
        if changed:
            self._log(f"MLflow: params {changed} differ from the run's first values; keeping the first")
        new = {k: v for k, v in kept.items() if k not in self._params}
        self._call("log params", self._log_params, new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Logs scalar metrics (nested mappings flattened; values anything ``float()`` takes) at ``step``."""
        if not self.active:
            return
        values = {_clean_key(k): float(v) for k, v in flatten(metrics).items()}
        self._call("log metrics", self._log_metrics, values, int(step))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Uploads a local file, or a folder's contents, under ``artifact_path`` (None: the run's root).

        A missing ``local_path`` is the caller's bug and raises ``FileNotFoundError``."""
        if not self.active:
            return
        if not os.path.exists(local_path):
            raise FileNotFoundError(local_path)
        self._call("log artifact", self._log_artifact, local_path, artifact_path, timeout=True)

    def log_artifact_uri(self, uri: str, artifact_path: str | None = None) -> None:
        """Uploads a file given by a storage URI (local path or s3://), downloading it first if remote."""
        if not self.active:
            return
        if storage.is_local(uri):
            self.log_artifact(storage.normalise(uri), artifact_path)
            return
        with tempfile.TemporaryDirectory(prefix="h2h-artifact-") as folder:
            local = os.path.join(folder, uri.rsplit("/", 1)[-1])
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
            self.log_artifact(local, artifact_path)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """Logs ``image`` (H, W, 3) uint8 RGB or (H, W) uint8 grey as a PNG at ``artifact_file``."""
        if not self.active:
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"log_image takes (H, W, 3) or (H, W) uint8, got {image.dtype} {image.shape}")
        if not artifact_file.lower().endswith(".png"):
            raise ValueError(f"log_image writes PNG: {artifact_file!r} must end with .png")
        self._call(
            "log image", self._client_call, "log_image", image, artifact_file=artifact_file, timeout=True
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Logs ``text`` (e.g. the resolved config as YAML) as the file ``artifact_file``; redacted."""
        if not self.active:
            return
        self._call("log text", self._client_call, "log_text", redact_text(text), artifact_file, timeout=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Sets run tags (flattened, redacted; secret-named keys dropped). Tags, unlike params, may change."""
        if not self.active:
            return
        kept, dropped = _clean_items(tags, MAX_TAG_VALUE_CHARS)
        if dropped:
            self._log(f"MLflow: not logging secret-looking tags {sorted(dropped)}")
        self._call("set tags", self._set_tags, kept)

    def end(self, status: str = "FINISHED") -> None:
        """Marks the run ``status`` (FINISHED, FAILED or KILLED); later calls do nothing."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {RUN_STATUSES}")
        if self.active:
            self._call("end run", self._client_call, "set_terminated", status=status)
        self._client = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    # -- MLflow calls (inside _call) -----------------------------------------------------------------

    def _call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        timeout: bool = False,
        starting: bool = False,
        **kwargs,
    ) -> Any:
        """Runs one MLflow operation; on the first failure says so once and turns tracking off."""
        if self._client is None and not starting:
            return None
        seconds = self.config.artifact_timeout_s if timeout else self.config.request_timeout_s
        try:
            with _http_limits(seconds, self.config.max_retries):
                return fn(*args, **kwargs)
        except Exception as err:  # any failure of the tracking store; training must go on
            state = "unreachable" if _is_connection_error(err) else "failed"
            reason = f"{_reason(err)} (while trying to {what})"
            uri = self.tracking_uri
            self._log(f"MLflow tracking at {uri} {state}: {reason}; training continues without tracking")
            self._client = None
            return None

    def _start(
        self, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None, resume_key: str | None
    ):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self._uri)
        experiment_id = _experiment_id(client, self.config.experiment, self._uri)
        kept, dropped = _clean_items(tags, MAX_TAG_VALUE_CHARS)
        if dropped:
            self._log(f"MLflow: not logging secret-looking tags {sorted(dropped)}")
        run = None
        if resume_key is not None and self._resume_existing:
            found = client.search_runs(
                [experiment_id],
                filter_string=_tag_filter(RESUME_TAG, resume_key),
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            run = found[0] if found else None
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            self._params = dict(run.data.params)
            self.resumed = True
            self._run_id = run.info.run_id
            self._client = client
            self._set_tags(kept)
        else:
            if resume_key is not None:
                kept[RESUME_TAG] = resume_key
            if parent_run_id is not None:
                kept[PARENT_TAG] = parent_run_id
            run = client.create_run(experiment_id, run_name=redact_text(run_name), tags=kept)
            self._run_id = run.info.run_id
            self._client = client

    def _client_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._client, method)(self._run_id, *args, **kwargs)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = list(params.items())
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[start : start + MAX_PARAMS_PER_BATCH]
            self._client.log_batch(self._run_id, params=[Param(k, v) for k, v in chunk])
            self._params.update(chunk)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, step) for k, v in values.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    def _log_artifact(self, local_path: str, artifact_path: str | None) -> None:
        if os.path.isdir(local_path):
            self._client.log_artifacts(self._run_id, local_path, artifact_path)
        else:
            self._client.log_artifact(self._run_id, local_path, artifact_path)

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = list(tags.items())
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[start : start + MAX_PARAMS_PER_BATCH]
            self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in chunk])


class NullTracker:
    """A tracker that records nothing (ranks other than 0, tracking switched off); ``Tracker``'s API."""

    run_id = None
    active = False
    tracking_uri = None
    resumed = False

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def log_artifact_uri(self, uri: str, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        pass


# -- run administration (fine-tuning reruns) -------------------------------------------------------


def _admin(config: TrackingConfig, default_uri: str | None, what: str, fn: Callable[[Any], Any], log) -> Any:
    """Runs ``fn(client)`` under the tracker's limits; failures are reported in one line, not raised."""
    uri = resolve_tracking_uri(config, default_uri)
    if not config.enabled or uri is None:
        return None
    from mlflow import MlflowClient

    try:
        with _http_limits(config.request_timeout_s, config.max_retries):
            return fn(MlflowClient(tracking_uri=uri))
    except Exception as err:  # a tracking failure never stops a job
        log(f"MLflow tracking at {redact_text(uri)}: could not {what}: {_reason(err)}")
        return None


def find_runs(
    config: TrackingConfig, tag: str, value: str, *, default_uri: str | None = None, log: Callable = print
) -> list[str]:
    """Ids of the active runs of ``config.experiment`` whose tag ``tag`` equals ``value``, newest first."""
    filter_string = _tag_filter(tag, value)

    def search(client) -> list[str]:
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            return []
        runs = client.search_runs(
            [experiment.experiment_id], filter_string, order_by=["attributes.start_time DESC"]
        )
        return [run.info.run_id for run in runs]

    return _admin(config, default_uri, "search runs", search, log) or []


def delete_run(
    config: TrackingConfig,
    run_id: str,
    *,
    artifacts: bool = True,
    default_uri: str | None = None,
    log: Callable = print,
) -> bool:
    """Deletes a run (MLflow marks it deleted; ``mlflow gc`` purges the row) and, by default, its
    artifacts now (from the store, through the server when artifacts are proxied). True when done."""
    uri = resolve_tracking_uri(config, default_uri)

    def delete(client) -> bool:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if artifacts:
            run = client.get_run(run_id)
            get_artifact_repository(run.info.artifact_uri, tracking_uri=uri).delete_artifacts()
        client.delete_run(run_id)
        return True

    return bool(_admin(config, default_uri, f"delete run {run_id}", delete, log))


def metric_history(
    config: TrackingConfig, run_id: str, key: str, *, default_uri: str | None = None, log: Callable = print
) -> list[tuple[int, float]]:
    """Every logged (step, value) of metric ``key`` of a run, in step order ([] when there is none)."""

    def history(client) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    return _admin(config, default_uri, f"read {key} of run {run_id}", history, log) or []
