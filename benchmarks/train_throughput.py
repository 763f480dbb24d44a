"""Training throughput of BrainCancerNet on this CPU, before and after each speed-up, in one run.

    python benchmarks/train_throughput.py --dataset ../shared/data/brain-tumor-mri

Each variant runs in its own process (the allocator setting must be in place before Python
starts) and times ``--steps`` optimizer steps of batch 32 at 192 px after two warm-up steps.
Variants add one change at a time:

1. baseline: glibc's default allocator, float32, NCHW tensors, every slice decoded from its
   JPEG and resized at every step (a Dataset that opens files, as a plain imagefolder loader does);
2. + allocator: ``GLIBC_TUNABLES`` that stop glibc returning memory to the OS after every batch;
3. + decode once: slices decoded once through ``datasets`` and kept as a uint8 array;
4. + channels_last;
5. + bf16 autocast, which the training recipe (``--mixed-precision auto``) keeps only on a CPU
   with native bf16 (AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# train/ is run from the checkout, not installed, so the repository root goes on the path.
sys.path.insert(0, str(ROOT))
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "train_throughput.json"
ALLOCATOR = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
VARIANTS = [
    ("baseline", {"allocator": False, "decoded": False, "channels_last": False, "bf16": False}),
    ("+ allocator", {"allocator": True, "decoded": False, "channels_last": False, "bf16": False}),
    ("+ decode once", {"allocator": True, "decoded": True, "channels_last": False, "bf16": False}),
    ("+ channels_last", {"allocator": True, "decoded": True, "channels_last": True, "bf16": False}),
    ("+ bf16 autocast", {"allocator": True, "decoded": True, "channels_last": True, "bf16": True}),
]


def measure(dataset: str, steps: int, options: dict) -> float:
    """Time training steps in this process and return images per second."""
    import numpy as np
    import torch
    from PIL import Image

    from brain_tumor_classifier import BrainTumorClassifier
    from brain_tumor_classifier.preprocessing import normalize, square_grayscale
    from train.augment import augment_batch
    from train.data import decode_pixels, load_labeled_images

    torch.manual_seed(0)
    size, batch_size = 192, 32
    images = load_labeled_images(dataset)
    labels = torch.from_numpy(images.labels)
    if options["decoded"]:
        pixels = torch.from_numpy(decode_pixels(images, size))
    else:
        paths = [str(Path(dataset) / file_id) for file_id in images.file_ids]

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(labels), (batch_size,), generator=torch.Generator().manual_seed(step))
        if options["decoded"]:
            return pixels[rows].unsqueeze(1), labels[rows]
        arrays = [square_grayscale(Image.open(paths[row]), size) for row in rows.tolist()]
        return torch.from_numpy(np.stack(arrays)).unsqueeze(1), labels[rows]

    classifier = BrainTumorClassifier(architecture="braincancernet", input_size=size, drop_rate=0.3)
    if options["channels_last"]:
        classifier.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    classifier.train()

    def step(index: int) -> None:
        uint8, targets = batch(index)
        inputs = normalize(augment_batch(uint8), classifier.mean, classifier.std)
        if options["channels_last"]:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=options["bf16"]):
            loss = torch.nn.functional.cross_entropy(classifier(inputs).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(2):
        step(index)
    start = time.perf_counter()
    for index in range(2, 2 + steps):
        step(index)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="Imagefolder of the MRI slices.")
    parser.add_argument("--steps", type=int, default=20, help="Timed optimizer steps per variant.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant is not None:
        options = dict(VARIANTS)[args.variant]
        print(json.dumps({"images_per_second": measure(args.dataset, args.steps, options)}))
        return 0

    # Warm the datasets cache so "decode once" measures training, not the first decoding.
    subprocess.run([sys.executable, "-c", "from train.data import *; decode_pixels(load_labeled_images("
                    f"{args.dataset!r}), 192)"], cwd=ROOT, check=True, capture_output=True)
    results = []
    for name, options in VARIANTS:
        environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
        if options["allocator"]:
            environment["GLIBC_TUNABLES"] = ALLOCATOR
        completed = subprocess.run(
            [sys.executable, __file__, "--dataset", args.dataset, "--steps", str(args.steps), "--variant", name],
            cwd=ROOT, env=environment, check=True, capture_output=True, text=True,
        )
        speed = json.loads(completed.stdout.strip().splitlines()[-1])["images_per_second"]
        results.append({"variant": name, **options, "images_per_second": round(speed, 1)})
        print(f"{name:18s} {speed:7.1f} img/s", flush=True)

    import torch

    from train.hardware import cpu_has_native_bf16, cpu_model_name

    native_bf16 = cpu_has_native_bf16()
    # The training recipe's --mixed-precision auto keeps bf16 only where the CPU has it natively.
    recipe = results[-1] if native_bf16 else results[-2]
    command = f"python benchmarks/train_throughput.py --dataset {args.dataset} --steps {args.steps}"
    output = args.output.resolve()
    if output != DEFAULT_OUTPUT:
        command += f" --output {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "cpu": cpu_model_name(),
        "native_bf16": native_bf16,
        "model": "braincancernet, 192 px, batch 32",
        "results": results,
        "speedup": round(results[-1]["images_per_second"] / results[0]["images_per_second"], 2),
        "recipe_variant": recipe["variant"],
        "recipe_speedup": round(recipe["images_per_second"] / results[0]["images_per_second"], 2),
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"speed-up, last variant vs baseline: {record['speedup']}x; recipe on this CPU "
          f"({recipe['variant']}): {record['recipe_speedup']}x; written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
