"""How long label-free estimation takes once the model's outputs exist (issue 17: seconds for 10,000 images on a CPU).

Synthetic outputs of the sizes a user meets: SRC and TGT logits over K classes and 1,280-dimensional non-negative
embeddings (EfficientNet-Lite0's width). Timed in one run, each step on its own: the distance check (kNN search and
thresholds), its null p-value, the density ratio (cross-fitted domain classifier), and ``estimate_performance``
with every method and the bootstrap.

    python3 benchmarks/estimate_speed.py [--target 10000] [--source 2000] [--classes 5] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from shiftkit.estimate import density_ratio_from_embeddings, distance_check_from_embeddings, estimate_performance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=int, default=10_000)
    parser.add_argument("--source", type=int, default=2_000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.source)
    source_logits = rng.normal(0, 1, (args.source, args.classes)) + 2.0 * np.eye(args.classes)[labels]
    target_logits = rng.normal(0, 1, (args.target, args.classes)) + 2.0 * np.eye(args.classes)[
        rng.integers(0, args.classes, args.target)]
    source_emb = np.abs(rng.normal(0, 1, (args.source, args.dim)))
    target_emb = np.abs(rng.normal(0.1, 1, (args.target, args.dim)))

    seconds = {}
    started = time.perf_counter()
    distance = distance_check_from_embeddings(source_emb, labels, target_emb, target_logits.argmax(axis=1))
    seconds["distance check (kNN, thresholds)"] = time.perf_counter() - started
    started = time.perf_counter()
    distance.null_p_value()
    seconds["its null p-value (100,000 draws)"] = time.perf_counter() - started
    started = time.perf_counter()
    density = density_ratio_from_embeddings(source_emb, target_emb)
    seconds["density ratio (5-fold domain classifier)"] = time.perf_counter() - started
    started = time.perf_counter()
    estimate_performance(source_logits, labels, target_logits, density_ratio=density, distance=distance,
                         bootstrap=args.bootstrap)
    seconds[f"estimate_performance (7 methods, {args.bootstrap} replicates)"] = time.perf_counter() - started
    print(f"{args.source} SRC and {args.target} TGT images, {args.classes} classes, {args.dim}-d embeddings")
    for step, value in seconds.items():
        print(f"  {step:55s} {value:6.2f} s")
    print(f"  {'total':55s} {sum(seconds.values()):6.2f} s")


if __name__ == "__main__":
    main()
