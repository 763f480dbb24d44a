"""Markdown and figures of the model comparison (``reports/comparison.md``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brain_tumor_classifier.explain import CHANCE_BASELINE_KEY  # noqa: E402

from .leakage import split_accuracy  # noqa: E402

if TYPE_CHECKING:
    from .compare import RunResult

SPLIT_TITLES = {
    "random": "Random split by slice (comparable with the literature)",
    "group": "Group-aware split (no similarity group on two sides)",
}
SAVE_OPTIONS = {"metadata": {"Software": None}}
# The other entry of faithfulness.json that is not a method, beside CHANCE_BASELINE_KEY.
FAITHFULNESS_SETTINGS_KEY = "settings"
FAITHFULNESS_FIGURE = "faithfulness.png"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def interval(bounds: list[float]) -> str:
    return f"{100 * bounds[0]:.1f}–{100 * bounds[1]:.1f}"


def plot_confusion_grid(results: list[RunResult], path: Path) -> None:
    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.9), dpi=110, squeeze=False)
    for axis, result in zip(axes[0], results):
        matrix = np.asarray(result.scores.metrics["confusion_matrix"]["matrix"])
        labels = result.scores.metrics["confusion_matrix"]["labels"]
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_title(f"{result.model}, {result.split} split", fontsize=9)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, str(count), ha="center", va="center", color=color)
    figure.tight_layout()
    figure.savefig(path, **SAVE_OPTIONS)
    plt.close(figure)


def plot_curves(results: list[RunResult], path: Path) -> None:
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for result in results:
        epochs = result.history["epochs"]
        numbers = [entry["epoch"] for entry in epochs]
        name = f"{result.model} ({result.split})"
        loss_line, = loss_axis.plot(numbers, [entry["train_loss"] for entry in epochs], label=f"{name} train")
        loss_axis.plot(numbers, [entry["val_loss"] for entry in epochs], "--", color=loss_line.get_color(),
                       label=f"{name} validation")
        accuracy_axis.plot(numbers, [entry["val_accuracy"] for entry in epochs], color=loss_line.get_color(),
                           label=f"{name} validation")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy loss")
    loss_axis.set_ylim(0, 1.5)
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_ylim(0.4, 1.0)
    loss_axis.legend(fontsize=7)
    accuracy_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, **SAVE_OPTIONS)
    plt.close(figure)


def plot_accuracy_intervals(results: list[RunResult], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 0.55 * len(results) + 1.2), dpi=110)
    names = [f"{result.model}, {result.split}" for result in results]
    values = [100 * result.scores.metrics["accuracy"] for result in results]
    lows = [values[i] - 100 * result.intervals["accuracy"][0] for i, result in enumerate(results)]
    highs = [100 * result.intervals["accuracy"][1] - values[i] for i, result in enumerate(results)]
    axis.errorbar(values, range(len(results)), xerr=[lows, highs], fmt="o", capsize=4)
    axis.set_yticks(range(len(results)), names)
    axis.set_xlabel("test accuracy (%), 95% bootstrap interval")
    axis.invert_yaxis()
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, **SAVE_OPTIONS)
    plt.close(figure)


def plot_leakage_pairs(audit: dict, path: Path, *, count: int = 6) -> None:
    """Show the most similar train/test pairs side by side."""
    pairs = audit["pairs"][:count]
    if not pairs:
        return
    row_of = {file_id: row for row, file_id in enumerate(audit["file_ids"])}
    figure, axes = plt.subplots(2, len(pairs), figsize=(1.9 * len(pairs), 4.2), dpi=100, squeeze=False)
    for column, (train_file, test_file, correlation) in enumerate(pairs):
        for row, (file_id, part) in enumerate(((train_file, "train"), (test_file, "test"))):
            axis = axes[row][column]
            axis.imshow(audit["pixels"][row_of[file_id]], cmap="gray")
            axis.set_title(f"{part}: {file_id}" + (f"\nr = {correlation:.3f}" if row == 0 else ""), fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, **SAVE_OPTIONS)
    plt.close(figure)


def method_scores(faithfulness: dict) -> dict[str, dict]:
    """Return the per-method entries of a faithfulness.json, highest energy pointing first."""
    methods = {
        name: values
        for name, values in faithfulness.items()
        if name not in (CHANCE_BASELINE_KEY, FAITHFULNESS_SETTINGS_KEY)
    }
    return dict(sorted(methods.items(), key=lambda item: -item[1]["energy_pointing"]))


def faithfulness_rows(faithfulness: dict) -> list[str]:
    """Return the Markdown table of one run's faithfulness.json, with the chance baseline as its last row."""
    chance = faithfulness.get(CHANCE_BASELINE_KEY)
    rows = [
        "| method | pointing game | energy pointing | energy pointing / chance | ROAD |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in method_scores(faithfulness).items():
        ratio = (
            f"{values['energy_pointing'] / chance['box_area_share']:.2f}x"
            if chance and chance["box_area_share"] > 0
            else "n/a"
        )
        rows.append(
            f"| {name} | {percent(values['pointing_game'])} | {percent(values['energy_pointing'])} "
            f"| {ratio} | {values['road']:+.4f} |"
        )
    if chance:
        share = percent(chance["box_area_share"])
        # Files written before the random-map baseline existed have no ROAD chance value.
        road = f"{chance['road_random_map']:+.4f}" if "road_random_map" in chance else "n/a"
        rows.append(f"| chance (box area share, random map) | {share} | {share} | 1.00x | {road} |")
    return rows


def faithfulness_lines(results: list[RunResult]) -> list[str]:
    """Return the "Grad-CAM faithfulness" section: one table per run that has a faithfulness.json."""
    scored = [result for result in results if result.faithfulness]
    lines = [
        "## Grad-CAM faithfulness",
        "",
        "Each Grad-CAM method explains the predicted class of every test slice that has a tumor box "
        "(`tumor_boxes.csv` of the dataset). Pointing game: share of slices whose map maximum lies in the "
        "box. Energy pointing: mean share of the map's total value inside the box. ROAD: mean change of the "
        "predicted class's probability after the most relevant input pixels are imputed (more negative "
        "means a more faithful map). The chance row is the mean share of the image area inside the box: "
        "a constant map gets it as energy pointing, and a map whose maximum falls on a uniformly random "
        "pixel gets it as pointing game in expectation. Its ROAD is the change when a uniformly random map "
        "chooses the imputed pixels, so a method's map is faithful only by as much as its ROAD lies below it.",
        "",
    ]
    if not scored:
        return lines + ["No run folder contains `faithfulness.json`. Write one with "
                        "`python -m train.faithfulness --run-dir RUN_DIR`.", ""]
    for result in scored:
        settings = result.faithfulness.get(FAITHFULNESS_SETTINGS_KEY, {})
        chance = result.faithfulness.get(CHANCE_BASELINE_KEY, {})
        counted = chance.get("num_images") or next(iter(method_scores(result.faithfulness).values()))["num_images"]
        scope = f"{counted} slices"
        if "test_slices" in settings:
            scope = f"{counted} of {settings['test_slices']} test slices"
        if "road_fraction" in settings:
            scope += f", ROAD imputes {settings['road_fraction']:.0%} of the input pixels"
        lines += [
            f"### {result.model}, {result.split} split",
            "",
            f"From `{result.run_dir / 'faithfulness.json'}` ({scope}), written by "
            f"`{settings.get('command', '(command not recorded)')}`.",
            "",
            *faithfulness_rows(result.faithfulness),
            "",
        ]
    unscored = [f"{result.model} ({result.split})" for result in results if not result.faithfulness]
    if unscored:
        lines += [f"Not measured (no `faithfulness.json` in the run folder): {', '.join(unscored)}.", ""]
    lines += [f"![Pointing game and energy pointing per method, with each model's chance level]"
              f"({FAITHFULNESS_FIGURE})", ""]
    return lines


def plot_faithfulness(results: list[RunResult], path: Path) -> bool:
    """Draw grouped bars of pointing game and energy pointing per method, one bar per run, with chance lines.

    Returns False, drawing nothing, when no run has a faithfulness.json.
    """
    scored = [result for result in results if result.faithfulness]
    if not scored:
        return False
    methods = list(method_scores(scored[0].faithfulness))
    methods += [name for result in scored[1:] for name in method_scores(result.faithfulness) if name not in methods]
    width = 0.8 / len(scored)
    panels = (
        ("pointing_game", "Pointing game", "slices with the map maximum in the box (%)"),
        ("energy_pointing", "Energy pointing", "share of the map's energy in the box (%)"),
    )
    figure, axes_pair = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    for axes, (key, title, label) in zip(axes_pair, panels):
        for index, result in enumerate(scored):
            scores = method_scores(result.faithfulness)
            values = [100 * scores[name][key] if name in scores else np.nan for name in methods]
            offsets = np.arange(len(methods)) + (index - (len(scored) - 1) / 2) * width
            color = f"C{index}"
            axes.bar(offsets, values, width=width, color=color, alpha=0.55, label=f"{result.model} ({result.split})")
            chance = result.faithfulness.get(CHANCE_BASELINE_KEY)
            if chance:
                # Drawn over the lighter bars in the same color, so each model's chance level stays visible.
                axes.axhline(100 * chance["box_area_share"], color=color, linestyle="--", linewidth=1.5, zorder=3,
                             label=f"chance, {result.model} ({result.split})")
        axes.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(label, fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    handles, labels = axes_pair[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2 * len(scored), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, **SAVE_OPTIONS)
    plt.close(figure)
    return True


def reliability_figure_name(result: RunResult) -> str:
    return f"reliability_{result.run_dir.name}.png"


def mirror_cell(choice: dict | None) -> str:
    """Describe the mirror-averaging choice with the validation accuracies it rests on."""
    if not choice:
        return "not chosen"
    answer = "yes" if choice["test_time_flip"] else "no"
    validation = choice.get("validation")
    if not validation:
        return f"{answer} (set by hand)"
    return (f"{answer} (validation {percent(validation['single']['accuracy'])} single, "
            f"{percent(validation['mirror_average']['accuracy'])} averaged)")


def calibration_rows(results: list[RunResult]) -> list[str]:
    """Return the Markdown table of the runs' calibration.json files, one row per calibrated run."""
    rows = [
        "| model | split | mirror averaging | temperature | ECE before | ECE after "
        "| out-of-scope false alarms (test MRI) | detected non-MRI images | command |",
        "|" + " --- |" * 9,
    ]
    for result in results:
        calibration = result.calibration
        if not calibration:
            continue
        test, non_mri = calibration["test"], calibration["non_mri"]
        false_alarms = round(test["false_alarm_rate"] * test["num_images"])
        detected = sum(category["detected"] for category in non_mri["categories"].values())
        rows.append(
            f"| {result.model} | {result.split} | {mirror_cell(calibration.get('test_time_flip'))} "
            f"| {calibration['temperature']:.4f} | {test['ece_before']:.4f} "
            f"| {test['ece_after']:.4f} | {percent(test['false_alarm_rate'])} ({false_alarms} of {test['num_images']}) "
            f"| {percent(non_mri['detection_rate'])} ({detected} of {non_mri['count']}) "
            f"| `{calibration['calibrate_command']}` |"
        )
    return rows


def calibration_lines(results: list[RunResult]) -> list[str]:
    """Return the "Calibration and out-of-scope detection" section from the runs' calibration.json files."""
    lines = [
        "## Calibration and out-of-scope detection",
        "",
        "`python -m train.calibrate` first chooses on the validation split whether the model averages each "
        "slice with its left-right mirror image (higher accuracy, then lower loss; the test figures in this "
        "report use the choice). It then fits a softmax temperature on the validation split and an out-of-scope "
        "detector (squared Mahalanobis distance of the pooled features to the nearest class mean, threshold "
        "set for 1% false alarms on validation slices). ECE is the expected calibration error on the test "
        "split before and after temperature scaling. False alarms are test MRI slices flagged as out of "
        "scope. The non-MRI images are generated or come from matplotlib's sample data "
        "(`train.calibrate.non_mri_images`).",
        "",
    ]
    calibrated = [result for result in results if result.calibration]
    if not calibrated:
        return lines + ["No run folder contains `calibration.json`. Write one with "
                        "`python -m train.calibrate --run-dir RUN_DIR`.", ""]
    bins = {result.calibration["test"]["ece_bins"] for result in calibrated}
    categories = {name: None for result in calibrated for name in result.calibration["non_mri"]["categories"]}
    lines += [
        f"ECE uses {' or '.join(str(count) for count in sorted(bins))} equal-width confidence bins. "
        f"Non-MRI categories: {', '.join(categories)}.",
        "",
        *calibration_rows(results),
        "",
    ]
    uncalibrated = [f"{result.model} ({result.split})" for result in results if not result.calibration]
    if uncalibrated:
        lines += [f"Not calibrated (no `calibration.json` in the run folder): {', '.join(uncalibrated)}.", ""]
    for result in calibrated:
        if (result.run_dir / "reliability_diagram.png").is_file():
            lines += [f"![Reliability diagram, {result.model}, {result.split} split]"
                      f"({reliability_figure_name(result)})", ""]
    return lines


def summary_rows(results: list[RunResult]) -> list[str]:
    rows = [
        "| model | split | accuracy (95% CI) | balanced accuracy (95% CI) | macro F1 (95% CI) | "
        + " | ".join(f"{name} acc. / AUC" for name in results[0].scores.classifier.label_names)
        + " |",
        "|" + " --- |" * (5 + len(results[0].scores.classifier.label_names)),
    ]
    for result in results:
        metrics = result.scores.metrics
        per_class = " | ".join(
            f"{percent(values['recall'])} / {'n/a' if values['roc_auc'] is None else format(values['roc_auc'], '.4f')}"
            for values in metrics["per_class"].values()
        )
        rows.append(
            f"| {result.model} | {result.split} | {percent(metrics['accuracy'])} ({interval(result.intervals['accuracy'])}) "
            f"| {percent(metrics['balanced_accuracy'])} ({interval(result.intervals['balanced_accuracy'])}) "
            f"| {100 * metrics['macro_f1']:.2f} ({interval(result.intervals['macro_f1'])}) | {per_class} |"
        )
    return rows


def cost_rows(results: list[RunResult]) -> list[str]:
    rows = [
        "| model | split | input | epochs (best) | training time | hardware | batch-1 latency | batched throughput "
        "| parameters | weights file |",
        "|" + " --- |" * 10,
    ]
    for result in results:
        inference = result.scores.metrics["inference"]
        minutes = result.history["training_seconds"] / 60
        rows.append(
            f"| {result.model} | {result.split} | {result.train_config['image_size']} px "
            f"| {len(result.history['epochs'])} ({result.history['best_epoch']}) | {minutes:.1f} min "
            f"| {result.history['hardware']} | {inference['batch_1_latency_ms']:.1f} ms "
            f"| {inference['batched_images_per_second']:.0f} img/s | {result.num_parameters / 1e6:.2f} M "
            f"| {result.weights_megabytes:.1f} MB |"
        )
    return rows


def leakage_accuracy_rows(results: list[RunResult], audits: dict) -> list[str]:
    """Return a table of each run's test accuracy on slices with and without a near-duplicate in train."""
    rows = [
        "Test accuracy apart for the slices with a near-duplicate in train and for the others "
        "(`python -m train.leakage --run-dir RUN_DIR --accuracy` gives the same for one run):",
        "",
        "| model | split | with a near-duplicate | without |",
        "| --- | --- | --- | --- |",
    ]
    for result in results:
        audit = audits.get(result.split)
        correct = result.scores.probabilities.argmax(axis=1) == result.scores.labels
        # Both models of a split share its manifest. A run whose test split differs gets no row.
        if audit is None or len(audit.get("test_file_ids", [])) != len(correct):
            continue
        parts = split_accuracy(correct, audit)
        cells = [
            "n/a" if part["accuracy"] is None else f"{percent(part['accuracy'])} of {part['test_images']}"
            for part in (parts["with_duplicate"], parts["without_duplicate"])
        ]
        rows.append(f"| {result.model} | {result.split} | {cells[0]} | {cells[1]} |")
    return rows


def write_report(output_dir: Path, results: list[RunResult], differences: dict, audits: dict, *, command: str) -> Path:
    """Write comparison.md, comparison.json and the figures, returning the Markdown path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion_grid(results, output_dir / "confusion_matrices.png")
    plot_curves(results, output_dir / "training_curves.png")
    plot_accuracy_intervals(results, output_dir / "accuracy_intervals.png")
    for split, audit in audits.items():
        plot_leakage_pairs(audit, output_dir / f"leakage_{split}.png")
    plot_faithfulness(results, output_dir / FAITHFULNESS_FIGURE)
    for result in results:
        diagram = result.run_dir / "reliability_diagram.png"
        if result.calibration and diagram.is_file():
            # A copy, because the ResNet50 run folders are not in version control.
            shutil.copyfile(diagram, output_dir / reliability_figure_name(result))

    lines = [
        "# ResNet50 vs BrainCancerNet on brain tumor MRI slices",
        "",
        "Research use only, not for diagnosis.",
        "",
        f"Generated by `{command}`. Every figure below comes from the run folders named in the last "
        "section; the test split of each run is listed in its `split_manifest.json`.",
        "",
        "## Test results",
        "",
        "Accuracy per class is the recall of that class. Intervals are 95% percentile bootstrap "
        f"intervals over the test images ({len(results[0].scores.labels)} or so per split, 2,000 resamples).",
        "",
        *summary_rows(results),
        "",
        "![Accuracy with intervals](accuracy_intervals.png)",
        "",
    ]
    for split, difference in differences.items():
        first, second = [result.model for result in results if result.split == split]
        lines.append(
            f"- {SPLIT_TITLES[split]}: {first} minus {second} accuracy = {100 * difference['difference']:+.2f} points "
            f"(paired bootstrap 95% interval {100 * difference['interval'][0]:+.1f} to "
            f"{100 * difference['interval'][1]:+.1f})."
        )
    lines += [
        "",
        "## Cost",
        "",
        "Latency and throughput were measured in one process on the machine that ran this command "
        "(median of 20 single-image calls; 64-image batches), in float32. A model that averages each slice "
        "with its mirror image (see the calibration table) runs both in one batch, and its times include that. "
        "Training time and hardware are those of the training run.",
        "",
        *cost_rows(results),
        "",
        *calibration_lines(results),
        *faithfulness_lines(results),
        "## Confusion matrices",
        "",
        "![Confusion matrices](confusion_matrices.png)",
        "",
        "## Training curves",
        "",
        "![Training curves](training_curves.png)",
        "",
        "## Leakage audit",
        "",
        "Near-duplicates are train/test pairs whose 24 x 24 thumbnails correlate at 0.97 or more "
        "(`train.groups.near_duplicate_pairs`). Run it on any split with `python -m train.leakage`.",
        "",
        "| split | test images | test images with a near-duplicate in train | pairs |",
        "| --- | --- | --- | --- |",
    ]
    for split, audit in audits.items():
        lines.append(
            f"| {split} | {audit['test_images']} | {audit['test_images_with_duplicate']} | {len(audit['pairs'])} |"
        )
    lines += ["", *leakage_accuracy_rows(results, audits)]
    for split, audit in audits.items():
        if audit["pairs"]:
            # The thumbnails are dataset images, so the file is written but kept out of version control.
            lines += ["", f"Most similar pairs, {split} split (thumbnails of dataset slices, written locally "
                      f"and not committed): `leakage_{split}.png`."]
    lines += ["", "## Run folders", ""]
    lines += [f"- {result.model}, {result.split}: `{result.run_dir}` (`{result.train_config['command']}`)"
              for result in results]

    report = output_dir / "comparison.md"
    report.write_text("\n".join(lines) + "\n")
    summary = [
        {
            "model": result.model,
            "split": result.split,
            "run_dir": str(result.run_dir),
            "metrics": {key: value for key, value in result.scores.metrics.items() if key != "evaluate_command"},
            "intervals": result.intervals,
            "training_seconds": result.history["training_seconds"],
            "hardware": result.history["hardware"],
            "num_parameters": result.num_parameters,
            "weights_megabytes": round(result.weights_megabytes, 2),
            "faithfulness": result.faithfulness,
            "calibration": calibration_summary(result.calibration),
        }
        for result in results
    ]
    (output_dir / "comparison.json").write_text(
        json.dumps({"command": command, "results": summary, "differences": differences}, indent=2) + "\n"
    )
    return report


def calibration_summary(calibration: dict | None) -> dict | None:
    """Return the figures of a calibration.json that the report shows, or None for an uncalibrated run."""
    if not calibration:
        return None
    return {
        "test_time_flip": (calibration.get("test_time_flip") or {}).get("test_time_flip", False),
        "temperature": calibration["temperature"],
        "ece_before": calibration["test"]["ece_before"],
        "ece_after": calibration["test"]["ece_after"],
        "test_false_alarm_rate": calibration["test"]["false_alarm_rate"],
        "non_mri_detection_rate": calibration["non_mri"]["detection_rate"],
        "calibrate_command": calibration["calibrate_command"],
    }


README_START = "<!-- comparison:start -->"
README_END = "<!-- comparison:end -->"


def update_readme_results(readme: Path, results: list[RunResult], *, command: str) -> bool:
    """Replace the README's results block (between its two markers) with this comparison's table.

    Returns False, changing nothing, when the README has no such block.
    """
    if not readme.is_file():
        return False
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    rows = [
        "| model | split | test accuracy (95% CI) | macro F1 | training time | hardware | batch-1 latency |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        metrics = result.scores.metrics
        rows.append(
            f"| {result.model} | {result.split} | {percent(metrics['accuracy'])} "
            f"({interval(result.intervals['accuracy'])}) | {100 * metrics['macro_f1']:.2f} "
            f"| {result.history['training_seconds'] / 60:.1f} min | {result.history['hardware']} "
            f"| {metrics['inference']['batch_1_latency_ms']:.1f} ms |"
        )
    block = "\n".join([README_START, "", f"Written by `{command}`; details in "
                       "[reports/comparison.md](reports/comparison.md).", "", *rows, "", README_END])
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(before + block + after)
    return True
