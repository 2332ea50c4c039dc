"""Write the bundled sample clips (src/viva/assets/samples/) that `viva demo` edits and `viva app` offers:
64x64, 8-frame world clips (H.264 mp4, a few KB each), a reference image where the edit needs one, and
samples.json naming each clip's instruction and its ground truth (source scene + instruction program, so
the demo can verify its edits).

    .venv/bin/python scripts/make_samples.py [OUT_DIR]

Deterministic: the clips are `viva.data.make_pair(seed, 0, category)` sources, so the same command
writes the same pictures (the mp4 bytes may differ across encoder versions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from viva.data.generate import make_pair
from viva.io import write_image, write_video
from viva.world import program_to_list

# (file stem, category, dataset seed): chosen so that the instructions read naturally.
SAMPLES = [
    ("recolor", "color", 7),
    ("remove", "remove", 7),
    ("add_from_reference", "ref_add", 7),
    ("replace", "replace", 7),
    ("hybrid", "hybrid", 9),
]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, category, seed in SAMPLES:
        pair = make_pair(seed, 0, category)
        write_video(out / f"{stem}.mp4", pair.source, fps=8)
        entry = {"name": stem, "video": f"{stem}.mp4", "instruction": pair.instruction, "reference": None}
        if pair.reference is not None:
            write_image(out / f"{stem}_reference.png", pair.reference)
            entry["reference"] = f"{stem}_reference.png"
        entry["world"] = {
            "category": pair.category,
            "scene": pair.source_scene.to_dict(),
            "program": program_to_list(pair.program),
        }
        entries.append(entry)
    (out / "samples.json").write_text(json.dumps(entries, indent=1) + "\n")
    for path in sorted(out.iterdir()):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "src" / "viva" / "assets" / "samples"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
