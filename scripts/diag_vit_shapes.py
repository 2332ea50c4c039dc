"""Diagnostic (docs/instructor.md): can a MiniViT learn per-patch sprite shape on its own, and how fast?

    .venv/bin/python scripts/diag_vit_shapes.py STEM GRID STEPS    # STEM patch|conv, GRID 4 (2x2-pooled) or 8

Trains a MiniViT + linear head on the shape of the sprite covering each patch (`patch_labels`; batch 64,
AdamW 1e-3, bf16 autocast, one core) and prints the held-out accuracy on sprite patches of 512 frames every
100 steps.
"""
import sys, time, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from viva.models.vision import MiniViT, VisionConfig
from viva.data.generate import DataConfig, make_pair
from viva.train.world_data import patch_labels, to_unit
from viva.world.scene import SHAPES
torch.set_num_threads(1); torch.manual_seed(0)
stem = sys.argv[1]; grid = int(sys.argv[2]); steps = int(sys.argv[3])
cfg = DataConfig(height=64, width=64, num_frames=8, image_fraction=1.0, categories=("remove", "replace", "color", "size"), min_sprites=2, max_sprites=4)
class D(Dataset):
    def __init__(s, seed): s.seed = seed
    def __len__(s): return 10**9
    def __getitem__(s, i):
        p = make_pair(s.seed, i, None, cfg)
        return torch.from_numpy(p.source[0].copy()), torch.from_numpy(patch_labels(p, grid)[:, 1])
def batches(seed, bs):
    return iter(DataLoader(D(seed), batch_size=bs, num_workers=1))
vit = MiniViT(VisionConfig(stem=stem)); head = torch.nn.Linear(256, len(SHAPES) + 1)
opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.05)
pool = 8 // grid
def logits(x):
    t = vit(to_unit(x))  # [B,64,256]
    if pool > 1:
        b, n, d = t.shape
        t = F.avg_pool2d(t.transpose(1, 2).reshape(b, d, 8, 8), pool).flatten(2).transpose(1, 2)
    return head(t)
test = next(batches(99, 512)); t0 = time.time(); it = batches(0, 64)
for step in range(1, steps + 1):
    x, y = next(it)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(x)
    loss = F.cross_entropy(out.float().flatten(0, 1), y.flatten())
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        with torch.no_grad():
            pred = logits(test[0]).argmax(-1); sprite = test[1] != len(SHAPES)
            acc = (pred == test[1])[sprite].float().mean()
        print(f"{stem} grid {grid} step {step}: loss {loss.item():.3f}, held-out sprite-patch shape acc {acc:.3f} ({time.time()-t0:.0f} s)", flush=True)
