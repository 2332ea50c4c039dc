"""The bundled sample clips (`viva/assets/samples/`, written by scripts/make_samples.py): a few 64x64,
8-frame world clips, each with an instruction that suits it, a reference image where the edit needs one,
and the world's ground truth (source scene + instruction program) so an edit of it can be verified.
`viva demo` edits all of them; `viva app` offers them as examples."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"


@dataclass(frozen=True)
class Sample:
    """A bundled clip with an instruction (and a reference image) that suits it. world: None, or
    {"category", "scene" (Scene.to_dict), "program" (program_to_list)} of the clip's source."""

    name: str
    video: Path
    instruction: str
    reference: Path | None = None
    world: dict | None = None

    def verify(self, frames):
        """The world verifier's result (`viva.world.verify.VerifyResult`) for an edit of this sample,
        uint8 [T,H,W,3] at the clip's size; None when the sample carries no ground truth."""
        if self.world is None:
            return None
        from viva.io import read_image
        from viva.world import Scene
        from viva.world.verify import verify

        reference = read_image(self.reference) if self.reference is not None else None
        return verify(Scene.from_dict(self.world["scene"]), self.world["program"], frames, reference)


def load_samples(folder: str | os.PathLike = SAMPLES_DIR) -> list[Sample]:
    """The samples listed in FOLDER/samples.json whose files exist; [] if there is no index."""
    folder = Path(folder)
    index = folder / "samples.json"
    if not index.is_file():
        return []
    samples = []
    for entry in json.loads(index.read_text()):
        reference = folder / entry["reference"] if entry.get("reference") else None
        samples.append(
            Sample(entry["name"], folder / entry["video"], entry["instruction"], reference, entry.get("world"))
        )
    return [s for s in samples if s.video.is_file() and (s.reference is None or s.reference.is_file())]
