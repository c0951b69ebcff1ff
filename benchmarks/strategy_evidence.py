"""Issue 18's evidence run: every strategy's target-test outcome, with the shift fingerprint, per scenario.

For each scenario of the evidence slice (:func:`shiftkit.scenarios.evidence_slice`: 29 scenarios in 7 families), in
order, each step resumable on its own:

1. ``build`` the scenario's files (deterministic; a rebuild writes the same bytes);
2. ``start == "source"``: train the source checkpoint once per source (``shiftkit finetune source.csv --val
   source_val.csv --strategy ft``);
3. the fingerprint, once per (target data, starting point): ``shiftkit diagnose source.csv pool.csv --fingerprint``
   (the pool is the target's unlabelled images); for ``start == "source"``, ``diagnose source_val.csv pool.csv
   --checkpoint SOURCE_MODEL`` (the source model embeds, on source images it did not train on);
4. ``shiftkit compare target_b<budget>.csv --val val.csv --test test.csv [--init SOURCE_MODEL]``: every strategy, a
   learning-rate grid chosen on the target's validation set, ``--seeds`` seeds, early stopping (compare's own
   ``runs.jsonl`` resumes an interrupted grid).

Then ``--collect`` writes the evidence table (``shiftkit/recommend/data/scenario_evidence.jsonl`` by default) from the
finished scenarios: one row per scenario (spec, fingerprint features, each strategy's test metric mean and standard
error over seeds, the chosen learning rate, the seconds each step took). Run it again after an interruption:
finished steps are skipped. The evidence file is also the checkpoint across machines and sessions: a scenario whose
row it holds, under the same protocol, is not run again; when an older revision of ``diagnose`` measured the row's
fingerprint (``EVIDENCE_PROTOCOL["fingerprint_revision"]``), only the fingerprint is, and ``--collect`` joins it to
the row's outcomes. So a run that lost OUT resumes from the committed file.

    python3 benchmarks/strategy_evidence.py --out /work/runs/evidence             # the whole slice, resumable
    python3 benchmarks/strategy_evidence.py --out /work/runs/evidence --collect   # the evidence file only

On several machines sharing OUT, steps 1-3 run once (``--prepare``), then each machine runs its share of every
scenario's grid through compare's own ``--shard I/N`` (runs I, I+N, ... of each grid), and ``--collect`` merges the
shards (``compare --report-only``) before it writes the evidence:

    python3 benchmarks/strategy_evidence.py --out /shared/evidence --prepare
    python3 benchmarks/strategy_evidence.py --out /shared/evidence --shard $SLURM_ARRAY_TASK_ID/8
    python3 benchmarks/strategy_evidence.py --out /shared/evidence --collect
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from shiftkit.compare.grid import parse_shard
from shiftkit.errors import ConfigError
from shiftkit.recommend.scenario_evidence import (EVIDENCE_FILE, collect_row, earlier_rows, fingerprint_current,
                                                  grid_finished, mark_fingerprint_current, row_current, write_evidence)
from shiftkit.scenarios import EVIDENCE_PROTOCOL, build, evidence_slice

PY = [sys.executable, "-m", "shiftkit"]


def _run(command: list[str], log: Path) -> None:
    """One shiftkit command, its output appended to LOG; a failure stops the run with the log's path."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        start = time.time()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT,
                               env={**os.environ, "COLUMNS": "120"})
        handle.write(f"[exit {code} after {time.time() - start:.0f} s]\n")
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")


def source_model(spec, out: Path, protocol: dict, log: Path) -> Path:
    folder = out / "models" / spec.source_key
    if not (folder / "metrics.json").exists():
        _run(PY + ["finetune", str(out / spec.source), "--val", str(out / spec.source_val), "--strategy", "ft",
                   "--arch", protocol["arch"], "--image-size", str(protocol["image_size"]),
                   "--lr", str(protocol["source_lr"]), "--epochs", str(protocol["source_epochs"]),
                   "--patience", str(protocol["patience"]), "--batch-size", str(protocol["source_batch_size"]),
                   "--cache-dir", str(out / "cache"), "--out", str(folder), "--resume"], log)
    return folder


def fingerprint(spec, out: Path, protocol: dict, model: Path | None, log: Path) -> Path:
    folder = out / "fingerprints" / f"{spec.variant_key}-{spec.start}"
    if not fingerprint_current(folder):
        pool = Path(spec.val).parent / "pool.csv"
        # from the source model: its validation images (it did not train on them; the estimate section needs that)
        source = spec.source_val if model else spec.source
        command = PY + ["diagnose", str(out / source), str(out / pool), "--fingerprint", "--no-thumbnails",
                        "--image-size", str(protocol["image_size"]), "--cache-dir", str(out / "cache"),
                        "--out", str(folder)]
        command += ["--checkpoint", str(model)] if model else ["--arch", protocol["arch"]]
        _run(command, log)
        mark_fingerprint_current(folder)
    return folder


def compare(spec, out: Path, protocol: dict, model: Path | None, log: Path, extra: tuple[str, ...] = ()) -> Path:
    """The scenario's grid; ``extra``: ``("--shard", "I/N")`` for one machine's share, ``("--report-only",)`` to
    merge every shard's recorded runs into the tables."""
    folder = out / "compare" / spec.name
    if not grid_finished(folder):
        command = PY + ["compare", str(out / spec.target), "--val", str(out / spec.val), "--test", str(out / spec.test),
                        "--lrs", protocol["lrs"], "--seeds", str(protocol["seeds"]),
                        "--epochs", str(protocol["epochs"]), "--patience", str(protocol["patience"]),
                        "--batch-size", str(protocol["batch_size"]), "--image-size", str(protocol["image_size"]),
                        "--cache-dir", str(out / "cache"), "--out", str(folder)]
        command += ["--init", str(model)] if model else ["--archs", protocol["arch"]]
        _run(command + list(extra), log)
    return folder


def prepared(spec, out: Path, fingerprinted: bool = True) -> Path | None:
    """The source model a sharded grid starts from (None from ImageNet); SystemExit when ``--prepare`` has not run
    (``fingerprinted``: the fingerprint must be there too, from the protocol's revision of diagnose)."""
    model = out / "models" / spec.source_key if spec.start == "source" else None
    needed = [out / spec.target] + ([model / "metrics.json"] if model else [])
    missing = [f"{path} is missing" for path in needed if not path.exists()]
    folder = out / "fingerprints" / f"{spec.variant_key}-{spec.start}"
    if fingerprinted and not fingerprint_current(folder):
        missing.append(f"{folder / 'report.json'} is missing or from an older diagnose")
    if missing:
        raise SystemExit(f"{missing[0]}: run --prepare once before the shards")
    return model


EXIT = re.compile(r"\[exit 0 after (\d+) s\]")


def step_seconds(out: Path, name: str) -> dict[str, int]:
    """Wall seconds of a scenario's finished steps, from its logs (every shard's): ``fingerprint`` (diagnose) and
    ``grid`` (compare); an interrupted command's time is lost."""
    seconds: dict[str, int] = {}
    logs = [out / "logs" / f"{name}.log", *(out / "logs").glob(f"{name}.shard-*.log")]
    for log in (log for log in logs if log.exists()):
        step = None
        for line in log.read_text().splitlines():
            if line.startswith("$ "):
                step = "fingerprint" if " diagnose " in line else "grid" if " compare " in line else None
            elif (match := EXIT.match(line)) and step:
                seconds[step] = seconds.get(step, 0) + int(match[1])
    return seconds


def with_seconds(row: dict, out: Path, earlier: dict | None) -> dict:
    """ROW with the seconds its steps took: this run's, or the earlier row's for a step this run did not repeat."""
    seconds = {**((earlier or {}).get("seconds") or {}), **step_seconds(out, row["name"])}
    return {**row, "seconds": seconds} if seconds else row


def model_seconds(out: Path) -> int:
    """Wall seconds of the source models' training, from their logs."""
    return sum(int(m) for log in (out / "logs").glob("model-*.log") for m in EXIT.findall(log.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="build root, models, fingerprints, compare runs")
    parser.add_argument("--collect", action="store_true", help="only write the evidence file from finished scenarios")
    parser.add_argument("--evidence", type=Path, default=EVIDENCE_FILE,
                        help="the evidence: its rows under this protocol are kept (their grids are not run again); "
                             "--collect rewrites it")
    parser.add_argument("--only", default=None, help="scenario names containing this text")
    parser.add_argument("--list", action="store_true", help="list the slice and exit")
    parser.add_argument("--prepare", action="store_true",
                        help="only the files, source models and fingerprints (before --shard on several machines)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="this machine's share of every grid (compare --shard I/N); run --prepare first")
    args = parser.parse_args()
    try:
        parse_shard(args.shard)
    except ConfigError as error:
        parser.error(str(error))
    if args.prepare and args.shard:
        parser.error("--prepare runs once, before the shards: leave out --shard")
    if args.collect and (args.prepare or args.shard):
        parser.error("--collect runs once, after the shards: leave out --prepare and --shard")
    if args.only and args.evidence == EVIDENCE_FILE and not args.list:
        parser.error("--only writes a subset: give --evidence FILE so the packaged evidence is not overwritten")
    out = args.out.resolve()
    protocol = dict(EVIDENCE_PROTOCOL)
    specs = [s for s in evidence_slice() if not args.only or args.only in s.name]
    if args.list:
        for spec in specs:
            print(spec.family, spec.name)
        print(f"{len(specs)} scenarios, {len({s.family for s in specs})} families")
        return
    earlier = earlier_rows(args.evidence)  # outcomes measured under this protocol by an earlier run
    if not args.collect:
        failed = []
        for number, spec in enumerate(specs, 1):
            shard = f".shard-{args.shard.replace('/', '-of-')}" if args.shard else ""  # one log per machine
            log = out / "logs" / f"{spec.name}{shard}.log"
            start = time.time()
            row = earlier.get(spec.name)
            if row_current(row):
                print(f"[{number}/{len(specs)}] {spec.name}: in {args.evidence.name} already", flush=True)
                continue
            try:
                if args.shard:
                    if not row:
                        compare(spec, out, protocol, prepared(spec, out), log, ("--shard", args.shard))
                else:
                    build(spec, out)
                    model = source_model(spec, out, protocol, out / "logs" / f"model-{spec.source_key}.log") \
                        if spec.start == "source" else None
                    fingerprint(spec, out, protocol, model, log)
                    if not args.prepare and not row:  # an earlier row's outcomes are kept; only its fingerprint
                        compare(spec, out, protocol, model, log)
            except (SystemExit, Exception) as exc:  # one scenario's failure does not hold up the others
                failed.append(spec.name)
                print(f"[{number}/{len(specs)}] {spec.name}: failed: {exc!r}", flush=True)
                continue
            print(f"[{number}/{len(specs)}] {spec.name}: {time.time() - start:.0f} s", flush=True)
        if failed:
            print(f"{len(failed)} scenario(s) failed: {', '.join(failed)}", flush=True)
        if args.prepare or args.shard:
            return
    else:  # merge sharded grids; one with runs still missing lists them, and collect_row leaves it out
        for spec in specs:
            folder = out / "compare" / spec.name
            if list(folder.glob("runs-shard-*.jsonl")) and not grid_finished(folder):
                try:
                    compare(spec, out, protocol, prepared(spec, out, fingerprinted=False),
                            out / "logs" / f"{spec.name}.log", ("--report-only",))
                except SystemExit as exc:
                    print(f"{spec.name}: not merged: {exc}", flush=True)
    rows = [collect_row(spec, out, earlier.get(spec.name)) for spec in specs]
    rows = [with_seconds(row, out, earlier.get(row["name"])) for row in rows if row is not None]
    if not rows:
        raise SystemExit(f"{out}: no scenario is finished with a current fingerprint; {args.evidence} left as it is")
    untimed = [row["name"] for row in rows if "grid" not in row.get("seconds", {})]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "python": platform.python_version(),
               "wall_seconds": model_seconds(out) + sum(sum(row.get("seconds", {}).values()) for row in rows),
               "note": "wall_seconds: the source models' training plus every row's seconds (fingerprint and grid), "
                       "summed over commands (shards run side by side count each)"
                       + (f"; {len(untimed)} grid(s) measured before rows were timed are not in it" if untimed else "")}
    write_evidence(args.evidence, rows, protocol=protocol, machine=machine)
    print(f"{len(rows)} of {len(specs)} scenarios written to {args.evidence}")


if __name__ == "__main__":
    main()
