"""Statistical power of the shift tests: detection rate against sample size ("Failing Loudly", small form).

Rabanser, Günnemann & Lipton (NeurIPS 2019) plant shifts of known size and count how often each test rejects
"no shift" at alpha = 0.05 as the number of target samples grows. This script does that on real data:

- data: PneumoniaMNIST's training split (28 px chest X-rays, normal vs pneumonia), shuffled with a seed and cut
  into three disjoint parts: a *reference* part (fits the PCA, the linear probe for BBSD and the label-shift
  classifier), a *source* pool and a *target* pool. Source and target come from one distribution ("one site
  split in halves"), so without a planted shift every rejection is a false positive;
- embeddings: EfficientNet-Lite0 with ImageNet weights at ``--image-size`` px (default 32; 1280-d), computed
  once and cached (``--cache``); covariate tests read 32 PCA components fitted on the reference part;
- shifts planted on the target pool: ``none`` (the null), Gaussian noise on every target image's pixels with
  sigma 1, 10 or 100 grey levels of 255 (``gn_small``/``gn_medium``/``gn_large``, Failing Loudly's levels,
  added at 28 px before resizing, clipped), ``ko_normal`` (every 'normal' image knocked out of the target) and
  ``reweight`` (target drawn 50/50 normal/pneumonia; this training split is only ~10 % normal, so a cell whose
  n the target pool cannot supply is not run and left empty);
- tests: ``mmd`` (RBF, permutations), ``domain_classifier`` (5-fold AUC), ``ot`` (sliced Wasserstein), ``bbsd``
  (KS on the softmax outputs of a linear probe fitted on the reference part, Bonferroni), ``label_shift``
  (EM-BCTS prior estimate, parametric-bootstrap test, classifier fitted on the reference part); all on the 32
  PCA components;
- for each shift, sample size n (per side) and repetition, n source and n target images are drawn without
  replacement (seeded) and every test runs once.

    python benchmarks/power.py --npz ../shared/data/medmnist/pneumoniamnist.npz --reps 20 --out runs/power.json
    python benchmarks/power.py --quick        # tiny smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmd_speed import _machine_info  # noqa: E402

from shiftkit.io import write_json  # noqa: E402

SHIFTS = ("none", "gn_small", "gn_medium", "gn_large", "ko_normal", "reweight")
NOISE = {"gn_small": 1.0, "gn_medium": 10.0, "gn_large": 100.0}
TESTS = ("mmd", "domain_classifier", "ot", "bbsd", "label_shift")
NORMAL = 0  # PneumoniaMNIST label 0: normal, 1: pneumonia


def embed(images: np.ndarray, image_size: int, batch: int = 128) -> np.ndarray:
    """uint8 N x 28 x 28 -> N x 1280 EfficientNet-Lite0 (ImageNet) embeddings, via the package's preprocessing."""
    from shiftkit.features import head_inputs_and_outputs
    from shiftkit.models import build_model

    adapted = build_model("efficientnet_lite0", 2, "imagenet", image_size)
    prep = adapted.preprocessing
    tensors = [prep.geometric(image.astype(np.float32) / 255.0) for image in images]
    batches = [(torch.stack(tensors[i: i + batch]), torch.zeros(len(tensors[i: i + batch])))
               for i in range(0, len(tensors), batch)]
    features, _, _ = head_inputs_and_outputs(adapted, batches, torch.device("cpu"))
    return features.numpy().astype(np.float64)


def noisy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.float64) + rng.normal(0.0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def load_embeddings(args) -> dict[str, np.ndarray]:
    """Reference, source and target embeddings (clean and noisy target variants), cached in one NPZ."""
    cache = args.cache
    key = f"{args.npz.name}|{args.image_size}|{args.pool}|{args.reference}|{args.seed}"
    if cache and cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if str(stored["key"]) == key:
            return {k: stored[k] for k in stored.files if k != "key"}
    data = np.load(args.npz)
    images, labels = data["train_images"], data["train_labels"].reshape(-1).astype(int)
    order = np.random.default_rng(args.seed).permutation(len(images))
    ref, src, tgt = np.split(order[: args.reference + 2 * args.pool], [args.reference, args.reference + args.pool])
    out = {"ref_y": labels[ref], "src_y": labels[src], "tgt_y": labels[tgt]}
    started = time.perf_counter()
    out["ref"] = embed(images[ref], args.image_size)
    out["src"] = embed(images[src], args.image_size)
    out["tgt_none"] = embed(images[tgt], args.image_size)
    for name, sigma in NOISE.items():
        out[f"tgt_{name}"] = embed(noisy(images[tgt], sigma, args.seed + 1), args.image_size)
    print(f"embedded {sum(len(v) for k, v in out.items() if not k.endswith('_y'))} images in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=np.array(key), **out)
    return out


def draw_target(shift: str, n: int, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices into the target pool for ``n`` images under ``shift`` (label shifts change which are drawn)."""
    if shift == "ko_normal":
        return rng.choice(np.flatnonzero(labels != NORMAL), n, replace=False)
    if shift == "reweight":
        k = n // 2
        return np.concatenate([rng.choice(np.flatnonzero(labels == NORMAL), k, replace=False),
                               rng.choice(np.flatnonzero(labels != NORMAL), n - k, replace=False)])
    return rng.choice(len(labels), n, replace=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", type=Path, default=Path("../shared/data/medmnist/pneumoniamnist.npz"))
    parser.add_argument("--sizes", default="10,20,50,100,200,500", help="samples per side")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--shifts", default=",".join(SHIFTS))
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--image-size", type=int, default=32, help="the 28 px images are resized to this")
    parser.add_argument("--pool", type=int, default=1000, help="images in each of the source and target pools")
    parser.add_argument("--reference", type=int, default=800, help="images fitting PCA and the classifiers")
    parser.add_argument("--permutations", type=int, default=200, help="MMD and OT permutations")
    parser.add_argument("--bootstrap", type=int, default=100, help="label-shift test's null draws")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/power_embeddings.npz"))
    parser.add_argument("--out", type=Path, default=Path("runs/power.json"))
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 2 sizes, 2 reps, small pools")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.pool, args.reference = "10,20", 2, 120, 100
        args.permutations, args.bootstrap = 50, 20
        args.cache = args.cache.with_name(args.cache.stem + "_quick.npz")
    if not args.npz.is_file():
        parser.error(f"{args.npz} not found (PneumoniaMNIST npz; see ../shared/data/README.md)")
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from shiftkit.shift.covariate import bbsd_ks_test, domain_classifier_test, mmd_test, ot_test
    from shiftkit.shift.label import SourceClassifier, estimate_label_shift

    sizes = [int(s) for s in args.sizes.split(",")]
    shifts = [s for s in args.shifts.split(",") if s]
    tests = [t for t in args.tests.split(",") if t]
    emb = load_embeddings(args)
    normals = int(np.sum(emb["tgt_y"] == NORMAL))

    def feasible(shift: str, n: int) -> bool:
        """Whether the target pool holds enough images of the needed class (else that cell is not run)."""
        if shift == "ko_normal":
            return n <= len(emb["tgt_y"]) - normals
        if shift == "reweight":
            return n // 2 <= normals and n - n // 2 <= len(emb["tgt_y"]) - normals
        return n <= len(emb["tgt_y"])
    pca = PCA(32, random_state=args.seed).fit(emb["ref"])
    # Both classifiers read the 32 PCA components: on the raw 1280-d embeddings of 800 images the logistic
    # regression separates the reference perfectly and its log-probabilities reach -inf.
    ref_pca = pca.transform(emb["ref"])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(ref_pca, emb["ref_y"])
    classifier = SourceClassifier.fit(ref_pca, emb["ref_y"], classes=[0, 1], seed=args.seed)
    src_pca = pca.transform(emb["src"])
    src_soft = probe.predict_proba(src_pca)
    rates: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()

    def save(seconds: float) -> None:
        write_json(args.out, {
            "benchmark": "shift-test power (Failing Loudly protocol, small form)",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data": {"reference": len(emb["ref"]), "source_pool": len(emb["src"]),
                     "target_pool": len(emb["tgt_none"]),
                     "source_pool_prior_normal": float(np.mean(emb["src_y"] == NORMAL))},
            "machine": _machine_info("cpu", None),
            "seconds": seconds,
            "detection_rate": rates,
        })
    for shift in shifts:
        tgt = emb[f"tgt_{shift}"] if shift in NOISE else emb["tgt_none"]
        tgt_pca = pca.transform(tgt)
        tgt_soft, tgt_logits = probe.predict_proba(tgt_pca), classifier.log_probabilities(tgt_pca)
        rates[shift] = {t: {} for t in tests}
        for n in sizes:
            if not feasible(shift, n) or n > len(src_pca):
                for test in tests:
                    rates[shift][test][str(n)] = None
                print(f"{shift:10} n={n:<4} not run: the target pool has {normals} normal images of "
                      f"{len(emb['tgt_y'])}", flush=True)
                continue
            hits = {t: 0 for t in tests}
            for rep in range(args.reps):
                rng = np.random.default_rng([args.seed, sizes.index(n), rep, SHIFTS.index(shift)])
                s = rng.choice(len(src_pca), n, replace=False)
                t = draw_target(shift, n, emb["tgt_y"], rng)
                seed = int(rng.integers(2**31))
                for test in tests:
                    if test == "mmd":
                        p = mmd_test(src_pca[s], tgt_pca[t], permutations=args.permutations, seed=seed).p_value
                    elif test == "domain_classifier":
                        p = domain_classifier_test(src_pca[s], tgt_pca[t], seed=seed).p_value
                    elif test == "ot":
                        p = ot_test(src_pca[s], tgt_pca[t], projections=50, permutations=args.permutations,
                                    exact_max=50, seed=seed).p_value
                    elif test == "bbsd":
                        p = bbsd_ks_test(src_soft[s], tgt_soft[t]).p_value
                    else:
                        p = estimate_label_shift(classifier, tgt_logits[t], bootstrap=args.bootstrap,
                                                 seed=seed).p_value
                    hits[test] += int(p < args.alpha)
            for test in tests:
                rates[shift][test][str(n)] = hits[test] / args.reps
            print(f"{shift:10} n={n:<4} " + "  ".join(f"{t} {hits[t] / args.reps:.2f}" for t in tests), flush=True)
        save(time.perf_counter() - started)  # after every shift, so a long run leaves its figures so far
    seconds = time.perf_counter() - started

    print(f"\ndetection rate at alpha {args.alpha} ({args.reps} repetitions; 'none' = false-positive rate)")
    header = f"{'shift':10} {'test':18} " + " ".join(f"{n:>6}" for n in sizes)
    print(header)
    print("-" * len(header))
    for shift in shifts:
        for test in tests:
            cells = [rates[shift][test][str(n)] for n in sizes]
            print(f"{shift:10} {test:18} " + " ".join("     —" if c is None else f"{c:6.2f}" for c in cells))
    save(seconds)
    print(f"wrote {args.out} ({seconds:.0f} s of testing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
