"""A small typed client of the Cloze API over httpx: datasets, jobs (with their live
stream), sweeps, models (imported from a directory, downloaded), fill-mask and embeddings.
Every API error raises ClozeError."""

import gzip
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Generic, TypedDict, TypeVar, cast

import httpx

from cloze_client.errors import ClozeError
from cloze_client.sse import StreamEvent, parse
from cloze_client.types import (
    TERMINAL,
    Dataset,
    DatasetPreview,
    Event,
    FillMaskResult,
    Job,
    JobEstimate,
    MetricPoint,
    Model,
    Sweep,
)

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")
# (bytes done, bytes in all or None when the server did not say)
Progress = Callable[[int, int | None], None]


class Page(TypedDict, Generic[T]):
    object: str
    data: list[T]
    has_more: bool


# The files a model import keeps (jobspec.model_dir.MODEL_FILE_SUFFIXES, which the client
# cannot import: it needs nothing of the service; a test holds the two equal). The server
# skips every other file and never stores it, so a directory is packed without them: a Hub
# directory's pickled, ONNX and OpenVINO copies of the weights are most of its size.
MODEL_FILE_SUFFIXES = frozenset({".json", ".safetensors", ".txt", ".model", ".md", ".jinja"})
MODEL_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_model_archive(path: Path) -> bool:
    return path.name.lower().endswith(MODEL_ARCHIVE_SUFFIXES)


def _model_files(directory: Path) -> tuple[list[Path], list[str]]:
    """The files of a model directory to upload (in a fixed order) and those left out
    (relative POSIX paths, sorted). Hidden files and folders (.git, huggingface-cli's
    .cache) are not the model's: they are neither packed nor listed."""
    kept: list[Path] = []
    left_out: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.suffix.lower() in MODEL_FILE_SUFFIXES:
                kept.append(path)
            else:
                left_out.append(path.relative_to(directory).as_posix())
    return kept, sorted(left_out)


def pack_model_dir(directory: str | Path, target: str | Path, *,
                   progress: Progress | None = None) -> list[str]:
    """Write a model directory as a .tar.gz at `target`, under the directory's own name,
    file by file in chunks (a directory of GBs is never held in memory); returns the files
    left out (see MODEL_FILE_SUFFIXES). Links are followed (a Hugging Face cache snapshot
    is made of them; the server refuses links in an archive). The same files give the same
    bytes (members in a fixed order, no timestamps, no owners), so a retry with an
    Idempotency-Key sends what the first try did. `progress(packed, total)` counts the
    files' bytes."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    files, left_out = _model_files(directory)
    if not any(p.name == "config.json" for p in files):
        raise ValueError(f"{directory}: no config.json (a model directory is what "
                         "save_pretrained or huggingface-cli download writes)")
    sizes = [p.stat().st_size for p in files]
    total, done = sum(sizes), 0
    with open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, size in zip(files, sizes, strict=True):
            info = tarfile.TarInfo(f"{directory.name}/{path.relative_to(directory).as_posix()}")
            info.size, info.mode, info.mtime = size, 0o644, 0
            with path.open("rb") as f:
                tar.addfile(info, _Counted(f, progress, total, start=done) if progress else f)
            done += size
    return left_out


class _Counted:
    """A binary file that reports how far it has been read (httpx reads an upload in
    chunks, seeking to 0 first, so the position is the count), after `start` bytes of
    files read before it."""

    def __init__(self, file: IO[bytes], progress: Progress, total: int, start: int = 0
                 ) -> None:
        self._file, self._progress, self._total, self._start = file, progress, total, start

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._progress(self._start + self._file.tell(), self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


class Client:
    """`Client()` talks to $CLOZE_URL (default http://127.0.0.1:8000) with $CLOZE_API_KEY,
    if set; both may be given instead."""

    # A stream's read timeout: the server sends a keep-alive every 15 s, so 60 s of
    # silence is a dead connection (reconnected).
    STREAM_READ_TIMEOUT_S = 60.0
    # Reconnects in a row, with backoff, before stream() gives up on an unreachable server.
    STREAM_RETRIES = 8

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("CLOZE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("CLOZE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=10.0))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------

    def _unreachable(self, exc: httpx.TransportError) -> ClozeError:
        return ClozeError(None, "connection_error", f"cannot reach the Cloze API at "
                          f"{self.url}: {exc or exc.__class__.__name__} (is it running? set "
                          "CLOZE_URL or --url)")

    @staticmethod
    def _error(response: httpx.Response) -> ClozeError:
        try:
            body = response.json()["error"]
            return ClozeError(response.status_code, str(body["code"]), str(body["message"]),
                              body.get("param"))
        except (ValueError, KeyError, TypeError):  # not the API's body: a proxy's page
            text = response.text.strip()[:200] or response.reason_phrase
            return ClozeError(response.status_code, "http_error", text)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    @staticmethod
    def _params(**params: Any) -> dict[str, Any]:
        return {k: v for k, v in params.items() if v is not None}

    def _upload(self, route: str, path: Path, *, name: str | None,
                progress: Progress | None, idempotency_key: str | None,
                params: dict[str, Any] | None = None) -> Any:
        """POST a file as the multipart 'file' part (with an optional 'name'), streamed from
        disk; no read timeout, as the server checks it before it answers."""
        total = path.stat().st_size
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as f:
            body: Any = _Counted(f, progress, total) if progress else f
            return self._json("POST", route, files={"file": (path.name, body)},
                              data=self._params(name=name), headers=headers, params=params,
                              timeout=httpx.Timeout(None, connect=10.0))

    # -- datasets ---------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, *, name: str | None = None,
                       tag_column: int | None = None, progress: Progress | None = None,
                       idempotency_key: str | None = None) -> Dataset:
        """Upload a corpus or labelled set (.txt, .jsonl, .json, .conll, .csv, .tsv, or .gz of
        them, or .parquet), streamed from disk; `progress(sent, total)` is called as it goes."""
        return cast(Dataset, self._upload(
            "/v1/datasets", Path(path), name=name, progress=progress,
            idempotency_key=idempotency_key, params=self._params(tag_column=tag_column)))

    def list_datasets(self, *, limit: int = 20, after: str | None = None) -> Page[Dataset]:
        return cast(Page[Dataset], self._json("GET", "/v1/datasets",
                                              params=self._params(limit=limit, after=after)))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._json("GET", f"/v1/datasets/{dataset_id}"))

    def preview_dataset(self, dataset_id: str, *, limit: int = 20, top: int = 20
                        ) -> DatasetPreview:
        """The first `limit` records, and per column its type, role, text-length histogram
        and the `top` most frequent labels."""
        return cast(DatasetPreview, self._json(
            "GET", f"/v1/datasets/{dataset_id}/preview", params={"limit": limit, "top": top}))

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # -- jobs -------------------------------------------------------------------------

    def submit_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Queue a pretraining or fine-tuning job (the spec as POST /v1/jobs takes it)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return cast(Job, self._json("POST", "/v1/jobs", json=spec, headers=headers))

    def estimate_job(self, spec: dict[str, Any]) -> JobEstimate:
        """What the job would do (steps, epochs, parameters, memory, time), checked as a
        submission is, creating nothing (POST /v1/jobs?dry_run=true)."""
        return cast(JobEstimate, self._json("POST", "/v1/jobs", json=spec,
                                            params={"dry_run": "true"}))

    def list_jobs(self, *, limit: int = 20, after: str | None = None,
                  status: str | None = None) -> Page[Job]:
        return cast(Page[Job], self._json("GET", "/v1/jobs", params=self._params(
            limit=limit, after=after, status=status)))

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def pause_job(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/v1/jobs/{job_id}/pause"))

    def resume_job(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/v1/jobs/{job_id}/resume"))

    def delete_checkpoints(self, job_id: str) -> dict[str, Any]:
        """Delete a finished job's checkpoints: {"deleted": how many, "bytes": freed of the
        storage quota, ...}. A job not finished yet is a ClozeError (409)."""
        return cast(dict[str, Any], self._json("DELETE", f"/v1/jobs/{job_id}/checkpoints"))

    def metrics(self, job_id: str, *, since_step: int | None = None,
                max_points: int | None = None) -> list[MetricPoint]:
        page = self._json("GET", f"/v1/jobs/{job_id}/metrics", params=self._params(
            since_step=since_step, max_points=max_points))
        return cast(list[MetricPoint], page["data"])

    def events(self, job_id: str, *, limit: int = 100, after: int | None = None
               ) -> Page[Event]:
        return cast(Page[Event], self._json("GET", f"/v1/jobs/{job_id}/events",
                                            params=self._params(limit=limit, after=after)))

    def stream(self, job_id: str, *, last_event_id: str | None = None,
               reconnect: bool = True) -> Iterator[StreamEvent]:
        """The job's events as they happen (see StreamEvent), until its final status. A
        dropped connection, or the server ending a long stream, is resumed after the last
        event received, so nothing comes twice; with reconnect=False one connection only."""
        failures = 0
        while True:
            got_any, opened = False, time.monotonic()
            try:
                with self._http.stream(
                        "GET", f"/v1/jobs/{job_id}/stream",
                        headers={"Last-Event-ID": last_event_id} if last_event_id else {},
                        timeout=httpx.Timeout(10.0, read=self.STREAM_READ_TIMEOUT_S)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise self._error(r)
                    failures = 0
                    for event in parse(r.iter_lines()):
                        got_any = True
                        last_event_id = event.id or last_event_id
                        yield event
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return
            except httpx.TransportError as exc:
                failures += 1
                if not reconnect or failures > self.STREAM_RETRIES:
                    raise self._unreachable(exc) from None
                time.sleep(min(0.5 * 2 ** (failures - 1), 10.0))
                continue
            if not reconnect:
                return
            if not got_any:
                if self.get_job(job_id)["status"] in TERMINAL:
                    return  # resumed after its final status: nothing more will come
                if time.monotonic() - opened < 1.0:
                    time.sleep(1.0)  # an empty answer (a proxy's?) is not retried in a loop

    # -- sweeps -----------------------------------------------------------------------

    def create_sweep(self, spec: dict[str, Any], *, idempotency_key: str | None = None
                     ) -> Sweep:
        """Start a hyperparameter sweep (the spec as POST /v1/sweeps takes it: a base job
        spec, a search space, trials); its first trials are queued at once."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return cast(Sweep, self._json("POST", "/v1/sweeps", json=spec, headers=headers))

    def list_sweeps(self, *, limit: int = 20, after: str | None = None) -> Page[Sweep]:
        return cast(Page[Sweep], self._json("GET", "/v1/sweeps",
                                            params=self._params(limit=limit, after=after)))

    def get_sweep(self, sweep_id: str) -> Sweep:
        return cast(Sweep, self._json("GET", f"/v1/sweeps/{sweep_id}"))

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        """Cancel a sweep and every trial it started."""
        return cast(Sweep, self._json("POST", f"/v1/sweeps/{sweep_id}/cancel"))

    def sweep_svg(self, sweep_id: str) -> str:
        """Each trial's eval metric against the step, as an SVG image."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/metrics.svg").text

    # -- models -----------------------------------------------------------------------

    def list_models(self, *, limit: int = 20, after: str | None = None) -> Page[Model]:
        return cast(Page[Model], self._json("GET", "/v1/models",
                                            params=self._params(limit=limit, after=after)))

    def get_model(self, model_id: str) -> Model:
        return cast(Model, self._json("GET", f"/v1/models/{model_id}"))

    def import_model(self, path: str | Path, *, name: str | None = None,
                     progress: Progress | None = None, packing: Progress | None = None,
                     idempotency_key: str | None = None) -> Model:
        """Import a Hugging Face model (safetensors weights) to serve or fine-tune: `path`
        is a model directory (as save_pretrained or huggingface-cli download writes it,
        sentence-transformers layout included) or a .tar.gz, .tar or .zip of one. A
        directory is packed into a temporary .tar.gz in $TMPDIR (pack_model_dir: streamed
        to disk, without the files the server would skip; `packing(bytes, total)` as it
        goes), then uploaded as a file is (`progress(sent, total)`). The model's
        details.skipped_files lists every file not imported, left out here or by the
        server. Raises ValueError for a path that is neither."""
        path = Path(path)
        if path.is_file() and is_model_archive(path):
            return cast(Model, self._upload("/v1/models/import", path, name=name,
                                            progress=progress,
                                            idempotency_key=idempotency_key))
        if not path.is_dir():
            what = "not a model directory or a .tar.gz, .tar or .zip archive" \
                if path.exists() else "no such file or directory"
            raise ValueError(f"{path}: {what}")
        folder = path.resolve().name or "model"
        with tempfile.TemporaryDirectory(prefix="cloze-import-") as tmp:
            archive = Path(tmp) / f"{folder}.tar.gz"
            left_out = pack_model_dir(path, archive, progress=packing)
            model = cast(Model, self._upload("/v1/models/import", archive, name=name,
                                             progress=progress,
                                             idempotency_key=idempotency_key))
        if left_out:
            details = model.setdefault("details", {})
            details["skipped_files"] = sorted({*details.get("skipped_files", []), *left_out})
        return model

    def download_model(self, model_id: str, path: str | Path, *,
                       progress: Progress | None = None) -> Path:
        """Download a model's export. A path ending in .tar.gz keeps the archive; any other
        path is a directory the model is extracted into, as `<path>/<model id>/` (a plain
        Hugging Face directory). Returns the archive or the model's directory."""
        path = Path(path)
        archive = path.name.endswith((".tar.gz", ".tgz"))
        target = path if archive else path / f"{model_id}.tar.gz.part"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", f"/v1/models/{model_id}/download",
                                   timeout=httpx.Timeout(60.0, connect=10.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._error(r)
                total = int(r.headers["content-length"]) \
                    if "content-length" in r.headers else None
                with target.open("wb") as out:
                    for chunk in r.iter_bytes():
                        out.write(chunk)
                        if progress:
                            progress(r.num_bytes_downloaded, total)
            if archive:
                return target
            with tarfile.open(target, "r:gz") as tar:
                tar.extractall(path, filter="data")
            return path / model_id
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            if not archive:
                target.unlink(missing_ok=True)

    def fill_mask(self, model_id: str, inputs: str | list[str], *, top_k: int | None = None,
                  targets: list[str] | None = None) -> list[Any]:
        """The Hugging Face fill-mask answer: for one text with one mask a flat list of
        FillMaskResult, best first; else a list per mask (and per input)."""
        body: dict[str, Any] = {"inputs": inputs}
        parameters = self._params(top_k=top_k, targets=targets)
        if parameters:
            body["parameters"] = parameters
        return cast(list[Any], self._json("POST", f"/v1/models/{model_id}/fill-mask",
                                          json=body))

    def feature_extraction(self, model_id: str, inputs: str | list[str], *,
                           normalize: bool | None = None, truncate: bool | None = None,
                           prompt_name: str | None = None) -> list[list[float]]:
        """Embeddings (the Hugging Face feature-extraction format): one vector per input, a
        list of one for a string; pooled as the model's sentence-transformers files say
        (else the mean of its last hidden states). normalize: unit length (default: as the
        model says); truncate=False: a text longer than the model embeds is a 413, not
        cut; prompt_name: one of the model's sentence-transformers prompts."""
        body = {"inputs": inputs, **self._params(normalize=normalize, truncate=truncate,
                                                 prompt_name=prompt_name)}
        return cast(list[list[float]], self._json(
            "POST", f"/v1/models/{model_id}/feature-extraction", json=body))

    def sentence_similarity(self, model_id: str, source: str, sentences: list[str]
                            ) -> list[float]:
        """The cosine of `source`'s embedding with each sentence's, in their order."""
        return cast(list[float], self._json(
            "POST", f"/v1/models/{model_id}/sentence-similarity",
            json={"inputs": {"source_sentence": source, "sentences": sentences}}))


__all__ = ["Client", "ClozeError", "FillMaskResult", "Page", "StreamEvent"]
