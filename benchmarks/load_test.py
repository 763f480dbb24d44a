"""Load test of the Gradio app: concurrent gradio_client clients sending good slices and bad files.

    python benchmarks/load_test.py [--clients 16] [--requests 500] [--images DIR] [--model FOLDER_OR_ID]
    python benchmarks/load_test.py --url http://127.0.0.1:7860/ [--server-pid PID]

Without ``--url`` the script starts ``python app.py`` on a free port of 127.0.0.1 and stops it
at the end, so it can also read the server's resident memory (RSS). ``--url`` must point at a
server on this machine (127.0.0.1 or localhost).

Every request uploads one file through the ``/predict`` endpoint, as the browser does. Good
slices come from ``--images`` (a folder of class subfolders such as ``glioma/``, which gives
each slice a known label, or a flat folder of images), else synthetic slices are generated.
About ``--bad-fraction`` of the requests send a bad file (text named .png, an empty file, a
truncated PNG, random bytes named .jpg). Outcomes per request:

- ``answered``: a good slice got the label that the same model gives it offline;
- ``withheld``: a good slice got the app's out-of-scope warning, as it does offline;
- ``rejected_as_expected``: a bad file got the app's error message;
- ``wrong_answer``: a bad file got a label, or a good slice got another answer than offline;
- ``busy``: the queue was full and the app asked the client to try again;
- ``failed``: anything else (a good slice rejected, a timeout, a connection error).

Before the run, the script loads the app's default model in its own process and predicts every
good slice once. The server must return that reference label under load. When the
slices come in class subfolders, the reference's own mistakes against those labels are counted
apart (``model_errors_against_folder_labels``), because they are errors of the model, not of
the server. With ``--url`` pass ``--reference-model`` naming the server's default model.

Results go to ``benchmarks/results/load_test.json``: counts, latency percentiles (upload to
downloaded gallery), throughput and the server's RSS before, at its peak during, after each
further 100 finished requests, and after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from space.client import client_temp_folder  # noqa: E402
from train.hardware import cpu_model_name  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# Shown in the probabilities box in place of a tumor type (space/ui.py, WITHHELD_LABEL).
WITHHELD_LABEL = "Not classified"


# Server ------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes(pid: int | None) -> int | None:
    """Return the resident memory of process ``pid`` from /proc, or None when it cannot be read."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def wait_until_ready(url: str, process: subprocess.Popen | None, *, timeout_s: float) -> float:
    """Poll ``url`` until it returns HTTP 200 and return the seconds waited.

    Raises RuntimeError when ``process`` exits first or ``timeout_s`` passes.
    """
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode} before it served {url}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the app did not serve {url} within {timeout_s:.0f} s")


def app_command(port: int, models: list[str], extra: list[str], *, app_dir: Path = ROOT) -> list[str]:
    """Return the command line that starts ``app_dir``/app.py on 127.0.0.1:``port``."""
    command = [sys.executable, str(app_dir / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    for model in models:
        command += ["--model", model]
    return command + extra


def app_environment() -> dict[str, str]:
    """Return the environment for a server process: this one's, with Gradio's usage analytics off."""
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}


@contextlib.contextmanager
def local_server(
    models: list[str], extra: list[str], *, log_path: Path, timeout_s: float, app_dir: Path = ROOT
) -> Iterator[tuple[str, int]]:
    """Start ``app_dir``/app.py on a free port of 127.0.0.1, yield its URL and process id, and stop it on exit.

    ``app_dir`` is a checkout of this repository; the default is the one this script belongs to.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            app_command(port, models, extra, app_dir=app_dir),
            cwd=app_dir,
            env=app_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_ready(url, process, timeout_s=timeout_s)
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def check_local_url(url: str) -> str:
    """Return ``url`` with a trailing slash, raising ValueError unless it names a server on this machine."""
    host = urlparse(url).hostname
    if host not in LOCAL_HOSTS:
        raise ValueError(f"--url must point at 127.0.0.1 or localhost, got host {host!r}. Start the app locally.")
    return url if url.endswith("/") else url + "/"


# Inputs ------------------------------------------------------------------------------------------


def synthetic_slice(rng: random.Random) -> Image.Image:
    """Return a grayscale slice-like image: a bright ellipse with a brighter blob, at a random size."""
    width, height = rng.randint(160, 512), rng.randint(160, 512)
    y, x = np.mgrid[0:height, 0:width]
    u = (x - width / 2) / (0.42 * width)
    v = (y - height / 2) / (0.42 * height)
    pixels = np.where(u**2 + v**2 < 1, 150.0 + 40 * rng.random(), 0.0)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    pixels += 80.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.01 * width * height))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class Sample:
    """One file to send, and the response expected for it."""

    path: Path
    bad: bool
    label: str | None = None  # the known class of a good slice, from its folder name
    expected: str | None = None  # the label of the model run offline: a class or WITHHELD_LABEL


def good_samples(images_dir: Path | None, folder: Path, *, count: int, rng: random.Random) -> list[Sample]:
    """Return good slices: up to ``count`` from ``images_dir`` (labeled by class folder), else synthetic ones."""
    if images_dir is None:
        samples = []
        for index in range(min(count, 20)):
            path = folder / f"synthetic-{index}.png"
            synthetic_slice(rng).save(path)
            samples.append(Sample(path, bad=False))
        return samples
    if not images_dir.is_dir():
        raise ValueError(f"--images {images_dir} is not a folder. Pass a folder of slices or of class subfolders.")
    samples = [
        Sample(path, bad=False, label=path.parent.name if path.parent != images_dir else None)
        for path in sorted(images_dir.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not samples:
        raise ValueError(f"--images {images_dir} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
    rng.shuffle(samples)
    return samples[:count]


def with_reference_answers(samples: list[Sample], models: list[str]) -> list[Sample]:
    """Predict every sample offline with the app's default model and return the samples with that label."""
    import app

    sources = app.model_sources(app.parse_args([arg for model in models for arg in ("--model", model)]))
    predictor = app.load_predictors(sources[:1]).popitem()[1]
    answered = []
    for sample in samples:
        prediction = predictor.predict(str(sample.path), explain=False)
        expected = WITHHELD_LABEL if prediction.out_of_scope else prediction.top_label
        answered.append(Sample(sample.path, bad=False, label=sample.label, expected=expected))
    return answered


def bad_samples(folder: Path, rng: random.Random) -> list[Sample]:
    """Write one file of each kind the app must reject and return them."""
    (folder / "notes.png").write_text("plain text, not an image")
    (folder / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    synthetic_slice(rng).save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (folder / "noise.jpg").write_bytes(rng.randbytes(4096))
    return [Sample(folder / name, bad=True) for name in ("notes.png", "empty.png", "truncated.png", "noise.jpg")]


def request_plan(good: list[Sample], bad: list[Sample], *, requests: int, bad_fraction: float, rng: random.Random) -> list[Sample]:
    """Return ``requests`` samples in random order, about ``bad_fraction`` of them bad files."""
    bad_count = round(requests * bad_fraction)
    plan = [bad[index % len(bad)] for index in range(bad_count)]
    plan += [good[index % len(good)] for index in range(requests - bad_count)]
    rng.shuffle(plan)
    return plan


# Clients -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one request."""

    kind: str  # "good" or "bad"
    outcome: str
    latency_s: float
    detail: str = ""


def classify_outcome(sample: Sample, result: tuple | None, error: BaseException | None) -> tuple[str, str]:
    """Return (outcome, detail) for one request, following the list in the module docstring."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    if isinstance(error, QueueError):
        return "busy", str(error)
    if error is not None:
        if sample.bad and isinstance(error, AppError):
            return "rejected_as_expected", ""
        return "failed", f"{type(error).__name__}: {error}"[:300]
    label = (result[0] or {}).get("label") if isinstance(result[0], dict) else None
    if sample.bad:
        return "wrong_answer", f"{sample.path.name} got label {label!r}"
    if not label:
        return "failed", "the answer had no label"
    if label != sample.expected:
        return "wrong_answer", f"{sample.path.parent.name}/{sample.path.name} got {label!r}, offline {sample.expected!r}"
    if label == WITHHELD_LABEL:
        return "withheld", ""
    return "answered", ""


def run_client(url: str, work: list[Sample], lock: threading.Lock, outcomes: list[Outcome], *, download_dir: str, timeout_s: float) -> None:
    """Send requests from the shared ``work`` list until it is empty, appending one Outcome each."""
    from gradio_client import Client, handle_file

    # httpx's default 5 s timeout would count a slow upload on a busy server as a failure.
    client = Client(url, verbose=False, download_files=download_dir, httpx_kwargs={"timeout": timeout_s})
    while True:
        with lock:
            if not work:
                return
            sample = work.pop()
        started = time.perf_counter()
        result, error = None, None
        try:
            job = client.submit(handle_file(str(sample.path)), api_name="/predict")
            result = job.result(timeout=timeout_s)
        except Exception as caught:  # noqa: BLE001 (every failure is counted, none stops the test)
            error = caught
        latency = time.perf_counter() - started
        outcome, detail = classify_outcome(sample, result, error)
        with lock:
            outcomes.append(Outcome("bad" if sample.bad else "good", outcome, latency, detail))


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Return p50, p95, p99 and max of ``values`` in seconds (None for an empty list)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 3),
        "p95": round(float(np.percentile(array, 95)), 3),
        "p99": round(float(np.percentile(array, 99)), 3),
        "max": round(float(array.max()), 3),
    }


class RssSampler(threading.Thread):
    """Background sampler of a process's RSS, every ``interval_s`` seconds.

    It keeps the maximum and, for each multiple of ``every`` that the number of finished requests
    (``finished()``) has reached, the first RSS sampled since then, so a results file shows
    whether memory levels off. Multiples passed between two samples get the same value.
    """

    def __init__(
        self, pid: int | None, finished: Callable[[], int], *, every: int = 100, interval_s: float = 0.5
    ) -> None:
        super().__init__(daemon=True)
        self.pid, self.finished, self.every, self.interval_s = pid, finished, every, interval_s
        self.peak = rss_bytes(pid)
        self.by_requests: dict[int, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read the RSS once, update the maximum and record every multiple of ``every`` reached so far."""
        current = rss_bytes(self.pid)
        if current is None:
            return
        self.peak = current if self.peak is None else max(self.peak, current)
        reached = self.finished() // self.every * self.every
        for milestone in range(self.every, reached + 1, self.every):
            self.by_requests.setdefault(milestone, current)


def load_test(url: str, plan: list[Sample], *, clients: int, server_pid: int | None, timeout_s: float) -> dict:
    """Send ``plan`` through ``clients`` concurrent clients and return the summary."""
    work = list(reversed(plan))
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    rss_before = rss_bytes(server_pid)
    sampler = RssSampler(server_pid, lambda: len(outcomes))
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="load-test-downloads-") as download_dir, client_temp_folder(download_dir):
        threads = [
            threading.Thread(
                target=run_client,
                args=(url, work, lock, outcomes),
                kwargs={"download_dir": download_dir, "timeout_s": timeout_s},
            )
            for _ in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - started
    sampler.stop_event.set()
    sampler.join()
    # The last requests may finish after the sampler's final sample.
    sampler.sample()

    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    completed = [outcome for outcome in outcomes if outcome.outcome not in ("busy", "failed")]
    answered = [outcome.latency_s for outcome in outcomes if outcome.outcome in ("answered", "withheld")]
    rejected = [outcome.latency_s for outcome in outcomes if outcome.outcome == "rejected_as_expected"]
    problems = [outcome.detail for outcome in outcomes if outcome.outcome in ("failed", "wrong_answer")]
    mib = 1024 * 1024
    return {
        "requests": len(outcomes),
        "wall_seconds": round(wall_s, 2),
        "throughput_requests_per_second": round(len(completed) / wall_s, 3) if wall_s else None,
        "counts": dict(sorted(counts.items())),
        "failed_requests": counts.get("failed", 0),
        "wrong_answers": counts.get("wrong_answer", 0),
        "busy_rejections": counts.get("busy", 0),
        "latency_seconds": {"good_slices": percentiles(answered), "bad_files": percentiles(rejected)},
        "server_rss_mib": {
            "before": None if rss_before is None else round(rss_before / mib, 1),
            "peak": None if sampler.peak is None else round(sampler.peak / mib, 1),
            "after": None if rss_bytes(server_pid) is None else round(rss_bytes(server_pid) / mib, 1),
            # Sampled every 0.5 s, so each figure is taken a little after its request count.
            "by_finished_requests": {str(count): round(rss / mib, 1) for count, rss in sorted(sampler.by_requests.items())},
        },
        # The first problems in full, so a failed run can be diagnosed from the JSON alone.
        "problem_examples": problems[:10],
    }


def machine_description() -> str:
    """Return the CPU, core count and Python version of this machine, for the results file."""
    return f"{cpu_model_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load-test the Gradio app with concurrent clients.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients. Default: 16.")
    parser.add_argument("--requests", type=int, default=500, help="Requests in total. Default: 500.")
    parser.add_argument("--bad-fraction", type=float, default=0.2, help="Share of requests that send a bad file. Default: 0.2.")
    parser.add_argument("--images", type=Path, default=None, help="Folder of slices, or of class subfolders that label them. Default: synthetic slices.")
    parser.add_argument("--max-images", type=int, default=200, help="Maximum number of distinct slices taken from --images. Default: 200.")
    parser.add_argument("--url", default=None, help="URL of a running app on 127.0.0.1. Default: start app.py.")
    parser.add_argument("--server-pid", type=int, default=None, help="Process id of the --url server, to read its RSS.")
    parser.add_argument("--model", action="append", default=None, help="--model option for the app.py this script starts (repeatable).")
    parser.add_argument("--reference-model", action="append", default=None, help="Model that labels the good slices offline. Default: the app's default model (required with --url).")
    parser.add_argument("--concurrency-limit", type=int, default=None, help="--concurrency-limit for the app.py this script starts.")
    parser.add_argument("--max-queue-size", type=int, default=None, help="--max-queue-size for the app.py this script starts.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds one request may take. Default: 300.")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="Seconds the started app may take to serve. Default: 600.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the synthetic slices and the request order.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json", help="Results file.")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or not 0 <= args.bad_fraction <= 1:
        parser.error("--clients and --requests must be positive, and --bad-fraction between 0 and 1.")

    rng = random.Random(args.seed)
    extra = []
    if args.concurrency_limit is not None:
        extra += ["--concurrency-limit", str(args.concurrency_limit)]
    if args.max_queue_size is not None:
        extra += ["--max-queue-size", str(args.max_queue_size)]
    with tempfile.TemporaryDirectory(prefix="load-test-inputs-") as folder:
        try:
            good = good_samples(args.images, Path(folder), count=args.max_images, rng=rng)
        except ValueError as error:
            parser.error(str(error))
        if args.url is not None and not args.reference_model:
            parser.error("--url needs --reference-model naming the server's default model, to check its answers.")
        good = with_reference_answers(good, args.reference_model or args.model or [])
        model_errors = sum(1 for sample in good if sample.label is not None and sample.expected != sample.label)
        plan = request_plan(good, bad_samples(Path(folder), rng), requests=args.requests, bad_fraction=args.bad_fraction, rng=rng)

        if args.url is not None:
            try:
                url = check_local_url(args.url)
            except ValueError as error:
                parser.error(str(error))
            summary = load_test(url, plan, clients=args.clients, server_pid=args.server_pid, timeout_s=args.timeout)
        else:
            log_path = Path(tempfile.gettempdir()) / "load_test_server.log"
            try:
                with local_server(args.model or [], extra, log_path=log_path, timeout_s=args.startup_timeout) as (url, pid):
                    summary = load_test(url, plan, clients=args.clients, server_pid=pid, timeout_s=args.timeout)
            except RuntimeError as error:
                print(f"error: {error}. The server's output is in {log_path}.", file=sys.stderr)
                return 2

    record = {
        "command": shlex.join(["python", "benchmarks/load_test.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "clients": args.clients,
        "good_slices": "synthetic" if args.images is None else str(args.images),
        "distinct_good_slices": len(good),
        "model_errors_against_folder_labels": model_errors,
        "bad_fraction": args.bad_fraction,
        "app_options": extra,
        # The allocator setting changes the server's memory figures. None means the script did not start the server.
        "server_glibc_tunables": None if args.url is not None else os.environ.get("GLIBC_TUNABLES", ""),
        **summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({key: record[key] for key in ("requests", "counts", "throughput_requests_per_second", "latency_seconds", "server_rss_mib")}, indent=2))
    print(f"Wrote {args.output}")
    return 0 if summary["failed_requests"] == 0 and summary["wrong_answers"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
