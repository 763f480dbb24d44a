"""Cold start of the app: seconds from ``python app.py`` to its first prediction response, with a breakdown.

    python benchmarks/cold_start.py [--repeats 3] [--model FOLDER_OR_ID ...] [--image SLICE] [--baseline REV]

Each repeat makes two measurements in fresh processes on 127.0.0.1:

1. End to end: start ``python app.py`` on a free port, poll until the page is served, then send
   one slice (``--image``, else a synthetic slice) through gradio_client and time the response, then a second one for the
   warm latency. The clock runs from just before the process is started.
2. Breakdown: a second fresh process runs the steps of ``app.main`` one by one and times them:
   interpreter start, importing gradio, importing the model code (torch, timm, pytorch-grad-cam,
   the package), importing app, loading the models, building the interface, launching the server,
   the first prediction in the process (cold) and a second one (warm).

The two processes are separate runs, so their totals differ a little. Only the first repeat
reads the files from disk if the OS has not cached them yet. Results go to
``benchmarks/results/cold_start.json``.

``--baseline REV`` measures a before/after pair in one run: the script checks out the commit
``REV`` into a temporary git worktree and runs both measurements there too, alternating with the
working tree in every repeat (the order flips each repeat), so that both sides see the same
machine load. Model folders given with ``--model`` are resolved against the current directory,
so both sides serve the same model files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from load_test import ROOT, app_environment, free_port, local_server, machine_description, rss_bytes, synthetic_slice

from space.client import client_temp_folder

# Runs in a fresh interpreter. It mirrors app.main and prints the phase times as one JSON line.
BREAKDOWN_SCRIPT = r"""
import json, sys, time
started = time.time()
clock = time.perf_counter()
phases = {}

def mark(name):
    global clock
    now = time.perf_counter()
    phases[name] = round(now - clock, 3)
    clock = now

import gradio
mark("import_gradio")
import brain_tumor_classifier.predictor
mark("import_model_code")
import app
from space.ui import build_demo, launch_options
mark("import_app")
args = app.parse_args(sys.argv[2:])
predictors = app.load_predictors(app.model_sources(args))
mark("load_models")
demo = build_demo(predictors, default_model=next(iter(predictors)), examples_dir=args.examples_dir)
mark("build_interface")
demo.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True, **launch_options())
mark("launch_server")
predictor = next(iter(predictors.values()))
predictor.predict(sys.argv[1])
mark("first_prediction")
predictor.predict(sys.argv[1])
mark("warm_prediction")
demo.close()
print(json.dumps({"process_started": started, "phases": phases}))
"""

LOADED_PATTERN = re.compile(r"Loaded (?P<source>\S+) \(.*\) in (?P<seconds>[0-9.]+) s")


def end_to_end(slice_path: Path, models: list[str], *, log_path: Path, timeout_s: float, app_dir: Path = ROOT) -> dict:
    """Start app.py, wait for its page and its first two prediction responses, and return the times in seconds."""
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="cold-start-downloads-") as downloads, client_temp_folder(downloads):
        started = time.perf_counter()
        with local_server(models, [], log_path=log_path, timeout_s=timeout_s, app_dir=app_dir) as (url, pid):
            page_served = time.perf_counter() - started
            client = Client(url, verbose=False, download_files=downloads, httpx_kwargs={"timeout": timeout_s})
            client.predict(handle_file(str(slice_path)), api_name="/predict")
            first_answer = time.perf_counter() - started
            warm_started = time.perf_counter()
            client.predict(handle_file(str(slice_path)), api_name="/predict")
            warm_answer = time.perf_counter() - warm_started
            rss = rss_bytes(pid)
    # app.py logs each model's load time, which places the model load inside the total.
    model_loads = {match["source"]: float(match["seconds"]) for match in LOADED_PATTERN.finditer(log_path.read_text())}
    return {
        "page_served_s": round(page_served, 3),
        "first_answer_s": round(first_answer, 3),
        "warm_answer_s": round(warm_answer, 3),
        "model_load_s_from_log": model_loads,
        "server_rss_mib": None if rss is None else round(rss / (1024 * 1024), 1),
    }


def breakdown(slice_path: Path, models: list[str], *, timeout_s: float, app_dir: Path = ROOT) -> dict:
    """Run BREAKDOWN_SCRIPT in a fresh interpreter in ``app_dir`` and return its phase times in seconds."""
    model_options = [option for model in models for option in ("--model", model)]
    command = [sys.executable, "-c", BREAKDOWN_SCRIPT, str(slice_path), "--port", str(free_port()), *model_options]
    started = time.time()
    completed = subprocess.run(
        command, cwd=app_dir, env=app_environment(), capture_output=True, text=True, timeout=timeout_s
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the breakdown run failed with status {completed.returncode}:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    phases = {"interpreter_start": round(result["process_started"] - started, 3), **result["phases"]}
    return {"phases_s": phases, "total_s": round(sum(phases.values()), 3)}


def median_of(runs: list[dict], *keys: str) -> float | None:
    """Return the median of the value at ``keys`` over ``runs``."""
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(value)
    return round(statistics.median(values), 3) if values else None


def git(*arguments: str) -> str:
    """Run git in this repository and return its stripped output. Raises RuntimeError with git's message on failure."""
    completed = subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(arguments)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


@contextlib.contextmanager
def baseline_checkout(revision: str) -> Iterator[tuple[Path, str]]:
    """Check out ``revision`` into a temporary git worktree, yield its folder and full commit id, then remove it.

    Raises RuntimeError with git's message when the revision or the worktree cannot be made.
    """
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="cold-start-baseline-") as parent:
        folder = Path(parent) / "checkout"
        git("worktree", "add", "--detach", str(folder), commit)
        try:
            yield folder, commit
        finally:
            git("worktree", "remove", "--force", str(folder))


def working_tree_commit() -> str | None:
    """Return the commit checked out in this repository, marked ``+changes`` when tracked files differ from it.

    Returns None outside a git checkout.
    """
    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (RuntimeError, OSError):
        return None
    return head + ("+changes" if changed else "")


def resolve_models(models: list[str]) -> list[str]:
    """Return ``models`` with existing folders made absolute, so that another checkout serves the same files."""
    return [str(Path(model).resolve()) if Path(model).is_dir() else model for model in models]


def medians(runs: list[dict]) -> dict:
    """Return the medians of the end-to-end times and breakdown phases of ``runs``."""
    phase_names = list(runs[0]["breakdown"]["phases_s"])
    return {
        "first_answer_s": median_of(runs, "end_to_end", "first_answer_s"),
        "page_served_s": median_of(runs, "end_to_end", "page_served_s"),
        "warm_answer_s": median_of(runs, "end_to_end", "warm_answer_s"),
        "breakdown_s": {name: median_of(runs, "breakdown", "phases_s", name) for name in phase_names},
    }


def measure(slice_path: Path, models: list[str], *, app_dir: Path, log_path: Path, timeout_s: float) -> dict:
    """Run one end-to-end measurement and one breakdown of the checkout in ``app_dir``."""
    return {
        "end_to_end": end_to_end(slice_path, models, log_path=log_path, timeout_s=timeout_s, app_dir=app_dir),
        "breakdown": breakdown(slice_path, models, timeout_s=timeout_s, app_dir=app_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the app from process start to its first prediction response.")
    parser.add_argument("--repeats", type=int, default=3, help="Measurements of each kind. Default: 3.")
    parser.add_argument("--model", action="append", default=None, help="--model option for app.py (repeatable). Default: app.py's own default.")
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="Slice to send. Default: a synthetic slice, which the bundled model flags as out of scope and "
        "therefore answers without a Grad-CAM gallery.",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        default=None,
        help="Git commit or branch to measure as well, alternating with the working tree, for a "
        "before/after pair. Default: measure the working tree only.",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds one measurement may take. Default: 900.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cold_start.json", help="Results file.")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1.")
    models = resolve_models(args.model or [])
    log_path = Path(tempfile.gettempdir()) / "cold_start_server.log"

    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="cold-start-inputs-"))
        if args.image is not None:
            if not args.image.is_file():
                parser.error(f"--image {args.image} is not a file. Pass the path of an MRI slice.")
            slice_path = args.image.resolve()
        else:
            slice_path = Path(folder) / "slice.png"
            synthetic_slice(random.Random(0)).save(slice_path)
        checkouts = {"current": ROOT}
        baseline_commit = None
        if args.baseline is not None:
            try:
                checkouts["baseline"], baseline_commit = stack.enter_context(baseline_checkout(args.baseline))
            except RuntimeError as error:
                parser.error(f"--baseline {args.baseline}: {error}")
        runs: dict[str, list[dict]] = {name: [] for name in checkouts}
        for repeat in range(args.repeats):
            # Flipping the order every repeat keeps a warming disk cache or a drifting load from
            # favouring one side.
            order = list(checkouts) if repeat % 2 == 0 else list(reversed(checkouts))
            for name in order:
                try:
                    run = measure(slice_path, models, app_dir=checkouts[name], log_path=log_path, timeout_s=args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    print(f"error: {error}\nThe app's output is in {log_path}.", file=sys.stderr)
                    return 2
                print(f"repeat {repeat + 1}, {name}: {json.dumps(run)}")
                runs[name].append(run)

    record = {
        "command": shlex.join(["python", "benchmarks/cold_start.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "models": models or "app.py default",
        "image": str(args.image) if args.image is not None else "synthetic slice",
        "commit": working_tree_commit(),
        "median": medians(runs["current"]),
        "runs": runs["current"],
    }
    if baseline_commit is not None:
        record["baseline"] = {
            "revision": args.baseline,
            "commit": baseline_commit,
            "median": medians(runs["baseline"]),
            "runs": runs["baseline"],
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    summary = {"current": record["median"]}
    if baseline_commit is not None:
        summary["baseline"] = record["baseline"]["median"]
    print(json.dumps(summary, indent=2))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
