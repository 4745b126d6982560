"""Geometry domain: procedural 3-D scenes with ground truth, image folders, metrics.

- `scenes`: rooms with boxes, spheres and panels, solid textures, ray casting in torch,
  ground-truth depth / intrinsics / poses, camera paths with controllable overlap,
  degradations (low light + noise, blur, an unseen texture style).
- `images`: one scene's photos from a folder, with clear errors.
- `metrics`: depth AbsRel, pointmap error after scale alignment, relative pose errors.
- `transforms`: poses, quaternions, the similarity (Umeyama) solver, pinhole cameras.
- `dust3r`: the DUSt3R network (mini-dust3r's), its upstream checkpoint format, a safe
  loader and the tiny architecture lora3d embeds.
"""
