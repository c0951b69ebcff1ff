"""What the per-block fingerprint costs on top of the plain embedding pass (issue 15: target <= 1.3x).

    python benchmarks/fingerprint_cost.py --images 256 --size 64 --repeats 3 --out fingerprint_cost.json

For each model (EfficientNet-Lite0 with its ImageNet weights, which load offline, and ResNet-18 with random
weights by default), the same images go through ``shiftkit.features.extract`` with ``blocks=False`` (today's
pass: embeddings only) and ``blocks=True`` (the same pass plus the block descriptors and BN input moments), cache
off, alternating the two ``--repeats`` times after one untimed warm-up of each; the median times and their ratio
are reported. ``extract`` includes decoding the images, as a user's run does; ``forward`` times the network alone
on one pre-decoded batch stack, the stricter view of the hooks' overhead. The images are synthetic textured PNGs
(``shiftkit.data.synthetic``) unless ``--data`` names a folder. Prints a table and writes JSON with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"efficientnet_lite0": "imagenet", "resnet18": "none"}


def _time(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def _measure(arch: str, weights: str, table, device, args) -> dict:
    import torch

    from shiftkit.features import extract
    from shiftkit.models.blocks import BlockProbe
    from shiftkit.models.registry import build_model

    adapted = build_model(arch, 2, weights, image_size=args.size)
    runs = {False: [], True: []}
    for blocks in (False, True):  # warm-up: file cache, allocator, cuDNN autotuning
        extract(table, adapted, device, batch_size=args.batch_size, blocks=blocks)
    for _ in range(args.repeats):  # alternate, so a busy moment of a shared machine hits both
        for blocks in (False, True):
            runs[blocks] += _time(lambda: extract(table, adapted, device, batch_size=args.batch_size, blocks=blocks), 1)

    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    adapted.model.eval()

    @torch.no_grad()
    def forward(probe: bool) -> None:
        amp = device.type == "cuda"
        with BlockProbe(adapted, descriptors=probe, bn=probe) as p:
            for start in range(0, len(images), args.batch_size):
                inputs = adapted.inputs(images[start:start + args.batch_size], device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                    adapted.model(inputs)
            p.descriptors()
            p.bn_moments()  # brings the accumulators to the CPU: waits for the device
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward_runs = {False: [], True: []}
    forward(False)
    forward(True)
    for _ in range(args.repeats):
        for probe in (False, True):
            forward_runs[probe] += _time(lambda: forward(probe), 1)
    med = {k: statistics.median(v) for k, v in runs.items()}
    fmed = {k: statistics.median(v) for k, v in forward_runs.items()}
    return {"arch": arch, "weights": weights, "extract_s": med[False], "extract_blocks_s": med[True],
            "extract_ratio": med[True] / med[False], "forward_s": fmed[False], "forward_blocks_s": fmed[True],
            "forward_ratio": fmed[True] / fmed[False], "runs": {"extract": [runs[False], runs[True]],
                                                                 "forward": [forward_runs[False], forward_runs[True]]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(f"{a}:{w}" for a, w in MODELS.items()),
                        help="comma-separated arch:weights")
    parser.add_argument("--data", type=Path, help="an image folder to use instead of synthetic images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from shiftkit.data import load_table
    from shiftkit.data.synthetic import write_dataset
    from shiftkit.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or write_dataset(Path(tmp) / "images", per_class=-(-args.images // 3), size=args.size)
        table = load_table(folder)
        args.images = len(table)
        results = [_measure(*spec.split(":"), table, device, args) for spec in args.models.split(",")]
    print(f"{args.images} images of {args.size} px, batch {args.batch_size}, {device}, median of {args.repeats}")
    print(f"{'model':<32} {'extract s':>10} {'+blocks s':>10} {'ratio':>6} {'forward s':>10} {'+blocks s':>10} {'ratio':>6}")
    for r in results:
        print(f"{r['arch'] + ' (' + r['weights'] + ')':<32} {r['extract_s']:>10.2f} {r['extract_blocks_s']:>10.2f} "
              f"{r['extract_ratio']:>6.2f} {r['forward_s']:>10.2f} {r['forward_blocks_s']:>10.2f} "
              f"{r['forward_ratio']:>6.2f}")
    if args.out:
        machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                   "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
                   "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
        args.out.write_text(json.dumps({"machine": machine, "images": args.images, "size": args.size,
                                        "batch_size": args.batch_size, "repeats": args.repeats,
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
