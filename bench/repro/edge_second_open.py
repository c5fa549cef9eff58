"""Minimal reproduction for qdrant-edge 0.9.0: a refused second `EdgeShard.load` damages the holder.

Process A creates a shard with a payload index, writes and flushes points, and keeps it open.
Process B calls `EdgeShard.load` on the same directory. B is refused ("WouldBlock": the WAL is
locked), but before refusing, the loader has already deleted A's
`payload_index/*/tracker_journal.dat` and rewritten `tracker.dat`. A's next flush then fails with
"Tracker journal ... is shorter than expected".

Run: python bench/repro/edge_second_open.py   (prints what B did to A's files and A's next flush)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import qdrant_edge as qe

SECOND = """
import sys, qdrant_edge as qe
try:
    qe.EdgeShard.load(sys.argv[1], None)
    print("second load: opened (unexpected)")
except Exception as exc:
    print("second load refused:", str(exc)[:160])
"""


def snapshot(shard: Path) -> dict[str, str]:
    files = sorted(p for p in shard.rglob("*") if p.is_file() and ("tracker" in p.name))
    return {str(p.relative_to(shard)): hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in files}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = Path(tmp) / "shard"
        config = qe.EdgeConfig(vectors={"image": qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine)})
        shard = qe.EdgeShard.create(str(shard_dir), config)
        shard.update(qe.UpdateOperation.create_field_index("tag", qe.PayloadSchemaType.Keyword))

        def write(start: int) -> None:
            points = [qe.Point(i, {"image": [1.0, 0.0, 0.0, float(i)]}, {"tag": f"t{i % 3}"})
                      for i in range(start, start + 50)]
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()

        write(1)
        before = snapshot(shard_dir)
        out = subprocess.run([sys.executable, "-c", SECOND, str(shard_dir)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-300:])
        after = snapshot(shard_dir)
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                print(f"  changed by the refused load: {name}: {before.get(name)} -> {after.get(name)}")
        if before == after:
            print("  holder's tracker files unchanged")
        try:
            write(1000)
            print("holder's next flush: ok")
        except Exception as exc:
            print("holder's next flush FAILED:", str(exc)[:300])
            return 1
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
