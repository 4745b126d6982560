"""DUSt3R's confidence-aware 3-D regression loss (mini-dust3r ships none).

Wang et al., "DUSt3R: Geometric 3D Vision Made Easy" (CVPR 2024), eq. 2-4:
both views' pointmaps are expressed in the first camera's frame; prediction and target
are each divided by their own mean distance to the origin over the valid pixels of the
two views ('avg_dis' normalisation); the per-pixel Euclidean error is weighted by the
predicted confidence C, and -alpha log C keeps C from growing without bound:

    L = sum_v mean_{i in valid_v} ( C_v,i * || X_v,i / z - Xgt_v,i / zgt || - alpha log C_v,i )

`valid` may also carry real-valued weights (a pseudo-label mask); a view with no valid
pixel contributes zero.
"""
from __future__ import annotations

import torch


def _norm_factor(pts: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
    """Mean distance to the origin over the valid pixels of all views, per batch item."""
    total = sum((p.norm(dim=-1) * v).flatten(1).sum(1) for p, v in zip(pts, valid))
    count = sum(v.flatten(1).sum(1) for v in valid)
    return (total / count.clamp(min=1e-8)).clamp(min=1e-8)


def regression_errors(pred: list[torch.Tensor], gt: list[torch.Tensor],
                      valid: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-pixel ||pred/z - gt/zgt|| for each view: (B, H, W) tensors."""
    v = [m.float() for m in valid]
    zp = _norm_factor(pred, v)
    zg = _norm_factor(gt, v)
    return [(p / zp.view(-1, 1, 1, 1) - g / zg.view(-1, 1, 1, 1)).norm(dim=-1)
            for p, g in zip(pred, gt)]


def confidence_loss(pred: list[torch.Tensor], conf: list[torch.Tensor], gt: list[torch.Tensor],
                    valid: list[torch.Tensor], alpha: float = 0.2) -> tuple[torch.Tensor, dict]:
    """The loss (a scalar) and its parts: 'regr' (unweighted error) and 'conf' (mean C)."""
    if not (len(pred) == len(conf) == len(gt) == len(valid)):
        raise ValueError("pred, conf, gt and valid must list the same views")
    errs = regression_errors(pred, gt, valid)
    total = pred[0].new_zeros(())
    regr = pred[0].new_zeros(())
    for err, c, m in zip(errs, conf, valid):
        w = m.float()
        denom = w.sum().clamp(min=1e-8)
        total = total + ((c * err - alpha * torch.log(c)) * w).sum() / denom
        regr = regr + (err * w).sum() / denom
    mean_conf = sum((c * m.float()).sum() for c, m in zip(conf, valid)) / \
        sum(m.float().sum() for m in valid).clamp(min=1e-8)
    return total, {"regr": regr.detach(), "conf": mean_conf.detach()}


def pair_targets(pts_world_1: torch.Tensor, pts_world_2: torch.Tensor,
                 pose1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World pointmaps (B,H,W,3) of both views in camera 1's frame (pose1: B,4,4 cam2world)."""
    w2c = torch.linalg.inv(pose1)
    r, t = w2c[:, None, :3, :3], w2c[:, None, :3, 3]

    def apply(p):
        return torch.einsum("bxij,bhwj->bhwi", r, p) + t[:, :, None, :]
    return apply(pts_world_1), apply(pts_world_2)


def patch_correspondences(pts_world: torch.Tensor, valid: torch.Tensor, K_other: torch.Tensor,
                          pose_other: torch.Tensor, depth_other: torch.Tensor, patch: int,
                          tol: float = 0.03) -> torch.Tensor:
    """For each patch of a view (row-major, as DUSt3R's tokens), the index of the patch of
    the other view that sees its centre point, or -1 when that point is outside the other
    image, occluded there (depth differs by more than `tol` relative) or not valid.

    pts_world, valid: (H, W, 3), (H, W) of this view; K_other (3, 3), pose_other (4, 4)
    camera-to-world, depth_other (H, W) of the other view."""
    h, w = valid.shape
    c = patch // 2
    centre = pts_world[c::patch, c::patch].reshape(-1, 3)
    ok = valid[c::patch, c::patch].reshape(-1)
    w2c = torch.linalg.inv(pose_other)
    cam = centre @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    pix = cam @ K_other.T
    u = pix[:, 0] / z.clamp(min=1e-6)
    v = pix[:, 1] / z.clamp(min=1e-6)
    ui, vi = u.round().long(), v.round().long()
    inside = (z > 1e-6) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    seen = depth_other[vi.clamp(0, h - 1), ui.clamp(0, w - 1)]
    visible = inside & ok & ((seen - z).abs() <= tol * z)
    target = (vi.clamp(0, h - 1) // patch) * (w // patch) + ui.clamp(0, w - 1) // patch
    return torch.where(visible, target, torch.full_like(target, -1))


class CrossAttentionProbe:
    """Records, for one head of every decoder cross-attention, the attention logits of the
    first view's tokens over the second's (`dec_blocks`) and the reverse (`dec_blocks2`),
    so a loss can teach that head to attend to the corresponding patch. Use as a context
    manager around the forward pass; `logits` then holds (which, (B, Nq, Nk)) pairs with
    which = 0 for view 1 -> 2 and 1 for view 2 -> 1."""

    def __init__(self, model, head: int = 0) -> None:
        self.model, self.head, self.logits, self._handles = model, head, [], []

    def _hook(self, which: int):
        def hook(attn, args, output):
            query, key, _value, qpos, kpos = args
            b, nq, dim = query.shape
            heads = attn.num_heads
            q = attn.projq(query).reshape(b, nq, heads, dim // heads).permute(0, 2, 1, 3)
            k = attn.projk(key).reshape(b, key.shape[1], heads, dim // heads).permute(0, 2, 1, 3)
            if attn.rope is not None:
                q, k = attn.rope(q, qpos), attn.rope(k, kpos)
            self.logits.append((which, (q[:, self.head] @ k[:, self.head].transpose(-2, -1))
                                * attn.scale))
        return hook

    def __enter__(self):
        for which, blocks in enumerate((self.model.dec_blocks, self.model.dec_blocks2)):
            for blk in blocks:
                self._handles.append(blk.cross_attn.register_forward_hook(self._hook(which)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def correspondence_loss(probe: CrossAttentionProbe, target_12: torch.Tensor,
                        target_21: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the probed heads against the true corresponding patch
    (targets (B, N) with -1 where a patch has no visible counterpart)."""
    losses = []
    for which, logits in probe.logits:
        target = target_12 if which == 0 else target_21
        if not (target >= 0).any():
            continue
        losses.append(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=-1))
    return torch.stack(losses).mean() if losses else target_12.new_zeros((), dtype=torch.float)
