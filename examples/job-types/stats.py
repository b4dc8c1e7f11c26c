"""csv-stats 1.0.0: summary statistics and a text histogram of one numeric column of a CSV file.

The job type's command runs it as

    python3 stats.py DATA COLUMN BINS OUTPUT_DIR

and it writes into OUTPUT_DIR:

- summary.csv          statistic,value rows (count, skipped, mean, std, min, median, max)
- histogram.txt        BINS equal-width bins between min and max, one line each
- seed.outputs.json    count, skipped, mean, std, min, max: the job's JSON outputs

Cells that are empty or not a finite number are skipped (and counted as `skipped`).
`std` is the sample standard deviation (0 for a single value). The setting DECIMALS (an
environment variable, 4 when unset) is how many decimals the two files show; the JSON
outputs keep full precision.

Exit codes, declared as the job type's errors:
  3  column-missing      COLUMN is not in the header row (or there is no header row)
  4  no-numeric-values   the column holds no finite number
  5  invalid-bins        BINS is not between 1 and 1000
  6  unreadable-csv      the file is not UTF-8 text

Standard library only: runs with any Python 3.8 or newer, as an unprivileged user.
"""

import csv
import json
import math
import os
import statistics
import sys

COLUMN_MISSING, NO_NUMERIC_VALUES, INVALID_BINS, UNREADABLE_CSV = 3, 4, 5, 6
MAX_BINS = 1000
BAR_WIDTH = 50


def fail(code, message):
    print(f"csv-stats: {message}", file=sys.stderr)
    sys.exit(code)


def read_column(path, column):
    """(finite values of `column`, how many cells were skipped)."""
    values, skipped = [], 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if column not in header:
                found = ", ".join(header) if header else "no header row"
                fail(COLUMN_MISSING, f"column {column!r} is not in {os.path.basename(path)} ({found})")
            for row in reader:
                value = number(row.get(column))
                if value is None:
                    skipped += 1
                else:
                    values.append(value)
    except UnicodeDecodeError as exc:
        fail(UNREADABLE_CSV, f"{os.path.basename(path)} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    return values, skipped


def number(cell):
    """A cell's value as a float, or None when it is empty, text, NaN or infinite."""
    try:
        value = float((cell or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def histogram(values, bins):
    """[(low, high, count)] for `bins` equal-width bins; the last bin includes the maximum."""
    low, high = min(values), max(values)
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        index = bins - 1 if width == 0 else min(int((value - low) / width), bins - 1)
        counts[index] += 1
    return [(low + i * width, low + (i + 1) * width if i < bins - 1 else high, c)
            for i, c in enumerate(counts)]


def main(argv):
    if len(argv) != 5:
        fail(2, "usage: stats.py DATA COLUMN BINS OUTPUT_DIR")
    data, column, bins_text, output_dir = argv[1:]
    try:
        bins = int(bins_text)
    except ValueError:
        bins = 0
    if not 1 <= bins <= MAX_BINS:
        fail(INVALID_BINS, f"BINS must be between 1 and {MAX_BINS}, not {bins_text}")
    decimals = int(os.environ.get("DECIMALS") or 4)

    values, skipped = read_column(data, column)
    if not values:
        fail(NO_NUMERIC_VALUES, f"column {column!r} holds no numeric value ({skipped} cells skipped)")
    stats = {
        "count": len(values),
        "skipped": skipped,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }
    print(f"{column}: {stats['count']} values, {skipped} skipped, mean {stats['mean']:.{decimals}f}")

    with open(os.path.join(output_dir, "summary.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["statistic", "value"])
        writer.writerow(["column", column])
        writer.writerow(["count", stats["count"]])
        writer.writerow(["skipped", skipped])
        for name in ("mean", "std", "min"):
            writer.writerow([name, f"{stats[name]:.{decimals}f}"])
        writer.writerow(["median", f"{statistics.median(values):.{decimals}f}"])
        writer.writerow(["max", f"{stats['max']:.{decimals}f}"])

    rows = histogram(values, bins)
    tallest = max(count for _, _, count in rows)
    with open(os.path.join(output_dir, "histogram.txt"), "w") as handle:
        handle.write(f"# {column}: {len(values)} values in {bins} bins\n")
        for index, (low, high, count) in enumerate(rows):
            closing = "]" if index == bins - 1 else ")"
            bar = "#" * round(BAR_WIDTH * count / tallest)
            handle.write(f"[{low:.{decimals}f}, {high:.{decimals}f}{closing} {count:>6} {bar}\n")

    with open(os.path.join(output_dir, "seed.outputs.json"), "w") as handle:
        json.dump(stats, handle)


if __name__ == "__main__":
    main(sys.argv)
