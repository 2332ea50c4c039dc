"""CPU offload of the frozen parts (`VivaEditor.place(device, offload_frozen=True)`,
`VivaPipeline.enable_model_cpu_offload`): the VAE and instructor stay in CPU memory and visit the compute
device only while they run; results do not change. Runs on every device this machine has (CPU here; with
a GPU the visits are real host <-> device moves)."""

import numpy as np
import pytest
import torch

from viva.models.tiny import build_tiny_editor
from viva.pipeline import VivaPipeline

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_pipeline_edits_the_same_and_keeps_encoders_in_cpu_memory(device):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    kwargs = dict(reference_image=reference, num_inference_steps=3, seed=1, progress=False)

    plain = VivaPipeline(build_tiny_editor(seed=0, vlm=True).to(device))
    expected = plain(video, "make the square red", **kwargs).frames

    editor = build_tiny_editor(seed=0, vlm=True)
    pipe = VivaPipeline(editor).enable_model_cpu_offload(device)
    assert _devices(editor.vae) == _devices(editor.instructor) == {"cpu"}
    assert _devices(editor.denoiser) == _devices(editor.refiner) == {device}
    seen = []  # where the encoders' weights are while they run
    for part in (editor.vae, editor.instructor):
        first = next(m for m in part.modules() if any(True for _ in m.parameters(recurse=False)))
        first.register_forward_pre_hook(lambda m, args, part=part: seen.append(next(m.parameters()).device.type))
    result = pipe(video, "make the square red", **kwargs).frames
    assert seen and set(seen) == {device}
    assert _devices(editor.vae) == _devices(editor.instructor) == {"cpu"}  # back in CPU memory
    if device == "cpu":
        assert np.array_equal(result, expected)
    else:  # same kernels on the same device; allow uint8 rounding at most
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1
