"""Issue 15's four real-data cases for ``diagnose --fingerprint``: where the shift peaks, the top image
properties, and the whole diagnose's wall time with and without the fingerprint (no cache).

Cases: HAM10000 rosendahl -> vidir_molemax, two random halves of rosendahl (a null), and PneumoniaMNIST's test
images (500, exported from ../shared/data/medmnist) against the same images with a planted Gaussian blur
(radius 1) or a planted contrast change (x 0.5).

    python3 benchmarks/fingerprint_cases.py --out /work/runs/fingerprint_cases
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

from shiftkit.data.medmnist import export_npz

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OPTIONS = ["--max-images", "300", "--image-size", "128", "--permutations", "200", "--bootstrap", "50",
           "--device", "cpu", "--seed", "0"]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def cases(out: Path) -> dict[str, tuple[Path, Path]]:
    ham = SHARED / "ham10000_sites"
    rows = list(csv.DictReader(open(ham / "metadata.csv")))
    site = lambda name: [(str(ham / r["path"]), r["label"]) for r in rows if r["site"] == name]  # noqa: E731
    rosendahl = site("rosendahl")
    shuffled = rosendahl[:]
    random.Random(0).shuffle(shuffled)
    half = len(shuffled) // 2
    found = {"ham_rosendahl_to_molemax": (_write(out / "ham_rosendahl.csv", rosendahl),
                                          _write(out / "ham_molemax.csv", site("vidir_molemax"))),
             "ham_rosendahl_halves": (_write(out / "ham_ros_a.csv", shuffled[:half]),
                                      _write(out / "ham_ros_b.csv", shuffled[half:]))}
    pneumonia = export_npz(SHARED / "medmnist" / "pneumoniamnist.npz", out / "pneu500", limit=500, seed=0)
    test = pneumonia["test"]
    for kind in ("blur", "contrast"):
        folder = out / f"pneu_{kind}"
        folder.mkdir(exist_ok=True)
        planted = []
        for row in csv.DictReader(open(test)):
            image = Image.open(test.parent / row["path"])
            image = image.filter(ImageFilter.GaussianBlur(1.0)) if kind == "blur" else \
                ImageEnhance.Contrast(image).enhance(0.5)
            path = folder / Path(row["path"]).name
            image.save(path)
            planted.append((str(path), row["label"]))
        found[f"pneumonia_{kind}"] = (test, _write(out / f"pneu_test_{kind}.csv", planted))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (source, target) in cases(args.out).items():
        seconds = {}
        for flag in ("--no-fingerprint", "--fingerprint"):
            out = args.out / "runs" / f"{name}{flag.replace('--', '_')}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "shiftkit", "diagnose", str(source), str(target), "--out", str(out),
                            flag, *OPTIONS], check=True, capture_output=True)
            seconds[flag] = time.perf_counter() - started
        fingerprint = json.loads((out / "report.json").read_text())["fingerprint"]
        peak = fingerprint["peak"]
        results[name] = {
            "peak": f"{peak['block']} ({peak['index'] + 1} of {peak['of']}, by {peak['by']})" if peak["shifted"]
            else "no significant block",
            "block_auc": [round(b["auc"], 3) for b in fingerprint["blocks"]],
            "top_properties": [(p["property"], p.get("cohens_d"), bool(p.get("significant")), p.get("explained_by"))
                               for p in fingerprint["image_properties"][:3]],
            "summary": fingerprint["summary"],
            "seconds_with": round(seconds["--fingerprint"], 1), "seconds_without": round(seconds["--no-fingerprint"], 1),
            "ratio": round(seconds["--fingerprint"] / seconds["--no-fingerprint"], 2)}
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
