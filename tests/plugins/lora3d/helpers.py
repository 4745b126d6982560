"""Shared fixtures of the lora3d tests: exact pairwise pointmaps, a micro DUSt3R config."""
import torch

from lorakit.domains.geometry import scenes
from lorakit.domains.geometry.transforms import to_frame
from lorakit.plugins.lora3d import pairs as P

INF = float("inf")
MICRO = dict(output_mode="pts3d", head_type="linear", patch_embed_cls="PatchEmbedDust3R",
             img_size=(16, 16), patch_size=8, enc_embed_dim=32, enc_depth=1, enc_num_heads=2,
             dec_embed_dim=32, dec_depth=1, dec_num_heads=2, pos_embed="RoPE100",
             landscape_only=False, depth_mode=("exp", -INF, INF), conf_mode=("exp", 1, INF))


def exact_predictions(n=4, size=20, seed=5, conf=3.0):
    """Pairwise pointmaps from ground truth, each edge at its own arbitrary scale."""
    scene = scenes.make_scene(seed)
    views = scenes.render_views(scene, scenes.camera_path(scene, n, overlap=0.8, seed=seed),
                                size=size)
    edges = [(i, j) for i in range(n) for j in range(n) if i != j]
    g = torch.Generator().manual_seed(0)
    pi, pj = [], []
    for i, j in edges:
        s = 0.5 + float(torch.rand(1, generator=g))
        pi.append(to_frame(views.poses[i], views.pts3d[i]) * s)
        pj.append(to_frame(views.poses[i], views.pts3d[j]) * s)
    c = torch.full((len(edges), size, size), conf)
    return views, P.PairPredictions(edges, torch.stack(pi), torch.stack(pj), c, c.clone())
