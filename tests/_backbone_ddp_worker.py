"""Worker of test_backbones.test_two_process_gloo_sft_keeps_ranks_identical (a module so spawn can import it)."""

import json
import sys


def run(rank: int, world: int, folder: str, rendezvous: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from viva.models.backbones import load_preset
    from viva.train.harness import weights_digest
    from viva.train.sft import SFTObjective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        editor = load_preset("lucy-edit", folder, height=32, width=32, num_frames=5, max_sequence_length=12)
        objective = SFTObjective(editor).train()
        ddp = DistributedDataParallel(objective)
        opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
        pixels = torch.rand((1, 3, 5, 32, 32), generator=g) * 2 - 1
        target = torch.rand((1, 3, 5, 32, 32), generator=g) * 2 - 1
        with torch.no_grad():
            cond = editor.encode_condition(["make the car red"], pixels)
            target = editor.encode_video(target)
        for _ in range(2):
            loss, _ = ddp(cond, target, None, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        digest = weights_digest({"denoiser": editor.denoiser})
        digests = [None] * world
        dist.all_gather_object(digests, digest)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"digests": digests, "loss": float(loss)}, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
