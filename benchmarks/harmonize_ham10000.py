"""Does image-level harmonization shrink a real site shift? HAM10000 dermoscopy, one site harmonized toward another.

Splits ``ham10000_sites/metadata.csv`` into per-site manifests (a seeded subset of ``--per-site`` images each),
then for each pair TARGET->REFERENCE and each method fits on the reference, writes the harmonized target and
measures MMD (permutation p-value) and the domain classifier's AUC between the reference and the target before
and after, with the embedding ``shiftkit harmonize`` and ``diagnose`` use (EfficientNet-Lite0, ImageNet).
Two "after" figures: ``after`` (only the target harmonized, what ``shiftkit harmonize`` reports) and ``both``
(the same fitted harmonizer also applied to the reference, as when a model is trained on harmonized source images:
per-image methods make every image look like the reference's *typical* image, which a heterogeneous raw reference
does not).

    python benchmarks/harmonize_ham10000.py --shared ../shared --out runs/harmonize_ham10000 \
        --per-site 500 --image-size 128 --cache-dir /work/cache/emb

``--auto`` runs ``harmonize --method auto``'s choice instead (:func:`shiftkit.harmonize.selection.select_harmonizer`:
every applicable harmonizer fitted on half the reference, scored on the held-out halves) for every ordered pair
(``--pairs all``), and tabulates the choice and the held-out shift before -> after (the chosen method's, or
unchanged when nothing reduced it and nothing would be written).
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shiftkit.data.table import load_table
from shiftkit.harmonize.apply import MeasureSettings, harmonize_table, measure_shift
from shiftkit.io import write_json

METHODS = {  # name -> (method, options)
    "histmatch": ("histmatch", {}),
    "colour_reinhard": ("colour", {"colour_method": "reinhard"}),
    "nyul": ("nyul", {}),
    "zscore": ("zscore", {}),
    "labmatch": ("labmatch", {}),
    "colour_shades_of_gray": ("colour", {"colour_method": "shades_of_gray"}),
    "colour_macenko": ("colour", {"colour_method": "macenko"}),
}


def write_site_manifests(metadata: Path, out: Path, per_site: int, seed: int) -> dict[str, Path]:
    rows = list(csv.DictReader(metadata.open()))
    by_site: dict[str, list[dict]] = {}
    for row in rows:
        by_site.setdefault(row["site"], []).append(row)
    out.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for site, site_rows in sorted(by_site.items()):
        site_rows = sorted(site_rows, key=lambda r: r["path"])
        if per_site and len(site_rows) > per_site:
            site_rows = sorted(random.Random(f"{seed}-{site}").sample(site_rows, per_site), key=lambda r: r["path"])
        manifests[site] = out / f"{site}.csv"
        with manifests[site].open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "site"])
            for row in site_rows:
                writer.writerow([str((metadata.parent / row["path"]).resolve()), row["label"], site])
    return manifests


def _figures(measured: dict) -> dict:
    return {"mmd2": measured["mmd"]["statistic"], "mmd_p": measured["mmd"]["p_value"],
            "auc": measured["domain_classifier"]["statistic"]}


def auto_pairs(manifests: dict[str, Path], pairs: list[tuple[str, str]], settings: MeasureSettings, out: Path,
               console: Console) -> None:
    """``--method auto`` on each TARGET:REFERENCE pair: the chosen method (or none) and the held-out shift."""
    from shiftkit.harmonize.selection import select_harmonizer

    summary_file = out / "auto_summary.json"
    results = {}
    table = Table(title="HAM10000: harmonize --method auto, held-out shift to the reference")
    for column in ("target -> reference", "chosen", "AUC before", "AUC after", "MMD² before", "MMD² after",
                   "candidates that reduce", "seconds"):
        table.add_column(column, justify="right")
    for target_site, reference_site in pairs:
        name = f"{target_site}->{reference_site}"
        started = time.perf_counter()
        selection = select_harmonizer(load_table(manifests[target_site]), load_table(manifests[reference_site]),
                                      "auto", settings).to_dict()
        before = selection["before"]
        chosen = next((c for c in selection["candidates"] if c["name"] == selection["chosen"]), None)
        row = {"chosen": selection["chosen"], "auc_before": before["auc"], "mmd_before": before["mmd"],
               "auc_after": chosen["auc_after"] if chosen else before["auc"],
               "mmd_after": chosen["mmd_after"] if chosen else before["mmd"],
               "reducing": [c["name"] for c in selection["candidates"] if c["reduces"] and not c["disqualified"]],
               "verdict": selection["verdict"], "seconds": round(time.perf_counter() - started, 1),
               "candidates": [{k: c[k] for k in ("name", "auc_after", "auc_after_ci", "mmd_after", "reduces",
                                                 "content_correlation", "disqualified", "rank")}
                              for c in selection["candidates"]]}
        results[name] = row
        write_json(summary_file, {"settings": {"image_size": settings.image_size, "max_images": settings.max_images,
                                               "permutations": settings.permutations}, "pairs": results})
        table.add_row(name, row["chosen"] or "none (nothing written)", f"{row['auc_before']:.3f}",
                      f"{row['auc_after']:.3f}", f"{row['mmd_before']:.4f}", f"{row['mmd_after']:.4f}",
                      ", ".join(row["reducing"]) or "—", f"{row['seconds']}")
        console.print(f"{name}: {row['verdict']} ({row['seconds']} s)", highlight=False)
    console.print(table)
    console.print(f"wrote {summary_file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("runs/harmonize_ham10000"))
    parser.add_argument("--per-site", type=int, default=500, help="images per site (0 = all)")
    parser.add_argument("--pairs", default="vidir_molemax:rosendahl,rosendahl:vidir_modern",
                        help="TARGET:REFERENCE pairs; the target is harmonized toward the reference")
    parser.add_argument("--methods", default="histmatch,colour_reinhard", help=f"any of {','.join(METHODS)}")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto", action="store_true", help="run --method auto's choice on --pairs (all: every "
                                                               "ordered pair of sites)")
    args = parser.parse_args()
    console = Console(width=200)
    manifests = write_site_manifests(args.shared / "data" / "ham10000_sites" / "metadata.csv",
                                     args.out / "manifests", args.per_site, args.seed)
    settings = MeasureSettings(image_size=args.image_size, permutations=args.permutations, seed=args.seed,
                               device=args.device, cache_dir=args.cache_dir)
    if args.auto:
        sites = sorted(manifests)
        pairs = ([(a, b) for a in sites for b in sites if a != b] if args.pairs == "all"
                 else [tuple(p.split(":")) for p in args.pairs.split(",")])
        auto_pairs(manifests, pairs, settings, args.out, console)
        return
    results: dict = {"settings": {**vars(args), "shared": str(args.shared), "out": str(args.out),
                                  "cache_dir": str(args.cache_dir)}, "pairs": {}}
    table = Table(title=f"HAM10000: shift to the reference before -> after harmonization ({args.per_site or 'all'} "
                        f"images per site, {args.image_size} px, {args.permutations} permutations)")
    for column in ("target -> reference", "method", "MMD² before", "after", "both", "p before", "after", "both",
                   "AUC before", "after", "both", "seconds"):
        table.add_column(column, justify="right")
    for pair in args.pairs.split(","):
        target_site, reference_site = pair.split(":")
        target, reference = load_table(manifests[target_site]), load_table(manifests[reference_site])
        name = f"{target_site}->{reference_site}"
        results["pairs"][name] = {}
        for method_name in args.methods.split(","):
            method, options = METHODS[method_name]
            started = time.perf_counter()
            out = args.out / name.replace("->", "_to_") / method_name
            harmonized, harmonizer = harmonize_table(target, reference, method, out, options=options)
            harmonizer.save(out / "harmonizer.json")
            measured = measure_shift(reference, target, harmonized, settings)
            reference_h, _ = harmonize_table(reference, reference, method, out / "reference", harmonizer=harmonizer)
            both = measure_shift(reference_h, target, harmonized, settings)["after"]
            seconds = round(time.perf_counter() - started, 1)
            b, a, h = _figures(measured["before"]), _figures(measured["after"]), _figures(both)
            results["pairs"][name][method_name] = {
                "before": b, "after": a, "both": h, "seconds": seconds, "n_reference": len(reference),
                "n_target": len(target), "detail": {"target_only": measured, "both_after": both}}
            table.add_row(name, method_name, *(f"{x['mmd2']:.4f}" for x in (b, a, h)),
                          *(f"{x['mmd_p']:.3g}" for x in (b, a, h)), *(f"{x['auc']:.3f}" for x in (b, a, h)),
                          f"{seconds}")
            console.print(f"{name} {method_name}: MMD² {b['mmd2']:.4f} -> {a['mmd2']:.4f} (both {h['mmd2']:.4f}), "
                          f"AUC {b['auc']:.3f} -> {a['auc']:.3f} (both {h['auc']:.3f}) ({seconds} s)",
                          highlight=False)
            write_json(args.out / "summary.json", results)
    console.print(table)
    console.print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
