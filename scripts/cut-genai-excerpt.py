#!/usr/bin/env python3
"""Cuts the GenAI excerpt in data/alibaba-genai-2026 from the full trace.

    scripts/cut-genai-excerpt.py FULL_TRACE_DIR [--containers 6]

Keeps, for each of the three files, the rows of the first N containers (by
hash, among those whose hash starts with 0-4 and that have a complete series
of GPU duty cycle, GPU memory and memory utilisation), rows and columns
unchanged. Deterministic: the same full trace always gives the same excerpt.
"""
import argparse
import collections
import csv
import os

FILES = [
    "pod_gpu_duty_cycle_anon.csv",
    "pod_gpu_memory_used_bytes_anon.csv",
    "pod_memory_util_anon.csv",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("full_trace_dir")
    ap.add_argument("--containers", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "alibaba-genai-2026"))
    args = ap.parse_args()
    counts = []
    for f in FILES:
        c = collections.Counter()
        with open(os.path.join(args.full_trace_dir, f)) as fh:
            for row in csv.DictReader(fh):
                c[row["container_ip"]] += 1
        counts.append(c)
    longest = max(counts[0].values())
    keep = sorted(
        ip
        for ip in counts[0]
        if ip[0] in "01234" and all(c.get(ip, 0) >= longest for c in counts)
    )[: args.containers]
    os.makedirs(args.out, exist_ok=True)
    for f in FILES:
        with open(os.path.join(args.full_trace_dir, f)) as src, open(os.path.join(args.out, f), "w", newline="") as dst:
            reader = csv.reader(src)
            header = next(reader)
            ip_col = header.index("container_ip")
            writer = csv.writer(dst, lineterminator="\n")
            writer.writerow(header)
            for row in reader:
                if row[ip_col] in keep:
                    writer.writerow(row)
    print("kept", len(keep), "containers:", " ".join(keep))


if __name__ == "__main__":
    main()
