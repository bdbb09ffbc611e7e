"""The slow, obvious reference rasteriser: the rules of ``pipeline.preprocess.rasterize`` written out
per frame, per face and per pixel centre, with no shared set-up code, so that the tests can hold the fast
backends to it bit for bit.
"""

from __future__ import annotations

import torch

from pipeline.preprocess.rasterize_types import Fragments, empty_fragments


def rasterize_reference(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], cull_backfaces: bool = False
) -> Fragments:
    """The same rules as ``rasterize`` written the obvious way, for tests: loop over frames and faces, test
    every pixel centre of the image against each triangle, keep the nearest (strictly nearer replaces, so
    equal depths keep the lower face id). O(B F H W); use on small meshes and images only.
    """
    height, width = image_size
    batch = verts_px.shape[0]
    dtype, device = verts_px.dtype, verts_px.device
    out = empty_fragments(batch, height, width, device, dtype)
    pix_to_face, zbuf, bary_coords = out
    py, px = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    rotations = ([0, 1, 2], [1, 2, 0], [2, 0, 1])
    for b in range(batch):
        for f, ids in enumerate(faces.tolist()):
            order = sorted(range(3), key=lambda k: ids[k])  # the face's corner slots by increasing id
            v = verts_px[b, [ids[k] for k in order]]  # sorted corners (3, 3)
            if not torch.isfinite(v).all():
                continue
            # Edge k, opposite sorted corner k, from its lower-id end a to its higher-id end c; the sorted
            # triangle runs edges 0 and 2 that way and edge 1 backwards.
            x_parts, y_parts, normals = [], [], []
            for (a, c), direction in zip(((v[1], v[2]), (v[0], v[2]), (v[0], v[1])), (1.0, -1.0, 1.0)):
                x_parts.append((px - a[0]) * (c[1] - a[1]))
                y_parts.append((py - a[1]) * (c[0] - a[0]))
                normals.append((direction, c[1] - a[1], -(c[0] - a[0])))
            # Signed area of the sorted triangle (edge 0's function at corner 0), and of the face itself.
            area2 = (v[0, 0] - v[1, 0]) * (v[2, 1] - v[1, 1]) - (v[0, 1] - v[1, 1]) * (v[2, 0] - v[1, 0])
            own_area2 = area2 if order in rotations else -area2
            if own_area2 == 0 or (cull_backfaces and own_area2 < 0):
                continue
            orient = 1.0 if area2 > 0 else -1.0
            u = [orient * d * x_part for (d, _, _), x_part in zip(normals, x_parts)]
            v_y = [orient * d * y_part for (d, _, _), y_part in zip(normals, y_parts)]
            w = [u[k] - v_y[k] for k in range(3)]  # each (H, W), >= 0 inside
            inside = torch.ones_like(px, dtype=torch.bool)
            for k, (d, nx, ny) in enumerate(normals):
                nx, ny = orient * d * nx, orient * d * ny  # inward normal
                on_edge_ok = bool(nx > 0 or (nx == 0 and ny > 0))
                inside &= (w[k] > 0) | ((w[k] == 0) & on_edge_ok)
            # The plane depth of the module docstring.
            z, area = v[:, 2], orient * area2
            depth = (
                (z[0] * u[0] + z[1] * u[1] + z[2] * u[2]) / area
                - (z[0] * v_y[0] + z[1] * v_y[1] + z[2] * v_y[2]) / area
                + 0.0
            )
            nearer = inside & (depth > zbuf[b])
            pix_to_face[b][nearer] = f
            zbuf[b][nearer] = depth[nearer]
            w_sum = w[0] + w[1] + w[2]
            weights = torch.empty(height, width, 3, dtype=dtype, device=device)
            for k in range(3):
                weights[..., order[k]] = w[k] / w_sum  # in the face's own corner order
            bary_coords[b][nearer] = weights[nearer]
    return Fragments(pix_to_face, zbuf, bary_coords)
