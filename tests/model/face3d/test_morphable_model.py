from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.face3d import ict_facekit
from model.face3d.loader import ModelNotFoundError, load_morphable_model
from model.face3d.morphable_model import save_morphable_model
from tests.conftest import ICT_PACKED, require


def write_ict_obj_folder(packed_path, folder):
    """Writes a FaceXModel folder laid out as an ICT-FaceKit clone has it, from the packed arrays.

    Shapes are written as neutral + delta in float64 text, so a correct importer recovers the packed
    float32 arrays bit for bit. Two extra OBJs that ICT-FaceKit ships but the light model's
    expression list does not name are added, and must be ignored.
    """
    data = np.load(packed_path)
    neutral = data["neutral"].astype(np.float64)
    polys = data["quads"]
    face_lines = []
    for poly in polys:
        ids = [int(i) + 1 for i in poly if i >= 0]
        face_lines.append("f " + " ".join(f"{i}/{i}/{i}" for i in ids))

    def write(name, verts, faces=()):
        body = "\n".join(f"v {x!r} {y!r} {z!r}" for x, y, z in verts.tolist())
        (folder / f"{name}.obj").write_text(
            "mtllib ICTFaceModelMaterial.mtl\n" + body + "\n" + "\n".join(faces)
        )

    folder.mkdir(parents=True)
    write("generic_neutral_mesh", neutral, face_lines)
    for name, delta in zip(data["identity_names"], data["identity_deltas"]):
        write(str(name), neutral + delta.astype(np.float64))
    for name, delta in zip(data["expression_names"], data["expression_deltas"]):
        write(str(name), neutral + delta.astype(np.float64))
    write("cheekRaiser_L", neutral + 1.0)
    write("PupilDilate_L", neutral - 1.0)
    (folder / "vertex_indices.json").write_text(str(data["vertex_indices_json"]))


@pytest.mark.slow
def test_obj_importer_agrees_exactly_with_packed_loader(tmp_path, ict_model):
    folder = tmp_path / "ICT-FaceKit" / "FaceXModel"
    write_ict_obj_folder(require(ICT_PACKED), folder)
    imported = load_morphable_model(folder.parent)  # the clone's root works as well as FaceXModel/
    for name in (
        "mean",
        "identity_basis",
        "expression_basis",
        "expression_bounds",
        "faces",
        "landmarks",
        "jaw_right",
        "jaw_left",
    ):
        a, b = getattr(imported, name), getattr(ict_model, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name
    assert imported.identity_names == ict_model.identity_names
    assert imported.expression_names == ict_model.expression_names
    assert imported.surface_vertex_count == ict_model.surface_vertex_count


def test_ict_model_contents(ict_model):
    m = ict_model
    assert (m.n_vertices, m.n_identity, m.n_expression) == (26719, 100, 53)
    assert m.units == "cm"
    assert "jawOpen" in m.expression_names and "eyeBlink_L" in m.expression_names
    # Face + head and neck, all quads: 11,144 polygons -> 22,288 triangles on 11,248 vertices.
    assert m.faces.shape == (22288, 3) and m.surface_vertex_count == 11248
    assert m.faces.max() == 11247 and len(np.unique(m.faces)) == 11248
    assert np.all(m.expression_bounds == [0.0, 1.0])
    # Identity basis at unit variance: the neutral shape is the mean, modes have non-trivial size.
    norms = np.linalg.norm(m.identity_basis.reshape(100, -1), axis=1)
    assert np.all(norms > 1.0)
    indices = json.loads(str(np.load(ICT_PACKED)["vertex_indices_json"]))
    assert list(m.landmarks) == indices["idx_to_landmark_verts"]


def test_zero_coefficients_give_the_mean_shape(ict_model):
    tm = ict_model.torch_model()
    verts = tm(torch.zeros(2, 100), torch.zeros(2, 53))
    assert verts.shape == (2, 26719, 3)
    assert torch.equal(verts[0], torch.from_numpy(ict_model.mean))
    assert np.array_equal(ict_model.vertices(), ict_model.mean)


def test_torch_and_numpy_vertices_agree_and_subsets_match(ict_model):
    rng = np.random.default_rng(0)
    identity = rng.normal(size=(3, 100)).astype(np.float32)
    expression = rng.uniform(0, 1, size=(3, 53)).astype(np.float32)
    tm = ict_model.torch_model(dtype=torch.float64)
    verts = tm(torch.from_numpy(identity), torch.from_numpy(expression))
    for b in range(3):
        expected = ict_model.vertices(identity[b], expression[b])
        np.testing.assert_allclose(verts[b].numpy(), expected, atol=1e-4)
    ids = torch.from_numpy(ict_model.landmarks.astype(np.int64))
    lmk = tm(torch.from_numpy(identity), torch.from_numpy(expression), vertex_ids=ids)
    torch.testing.assert_close(lmk, verts[:, ids])
    # Gradients flow to both coefficient sets.
    id_t = torch.from_numpy(identity).double().requires_grad_()
    ex_t = torch.from_numpy(expression).double().requires_grad_()
    tm(id_t, ex_t, vertex_ids=ids).sum().backward()
    assert id_t.grad.abs().sum() > 0 and ex_t.grad.abs().sum() > 0
    # One identity for every frame (a video, computed once) gives each frame's vertices; equal rows that
    # need gradients each get their own.
    shared = torch.from_numpy(identity[:1]).double().expand(3, -1)
    for b in range(3):
        expected = ict_model.vertices(identity[0], expression[b])
        np.testing.assert_allclose(tm(shared, torch.from_numpy(expression))[b].numpy(), expected, atol=1e-4)
    equal_rows = torch.zeros(3, 100, dtype=torch.float64, requires_grad=True)
    tm(equal_rows, torch.from_numpy(expression).double()).sum().backward()
    assert (equal_rows.grad.abs().sum(1) > 0).all()


def test_landmarks_land_on_the_expected_features_of_the_mean_face(ict_model):
    lm = ict_model.mean[ict_model.landmarks]  # (68, 3), cm, y up, z towards the viewer
    inter_ocular = np.linalg.norm(lm[36] - lm[45])
    assert 8.0 < inter_ocular < 11.0  # outer eye corners of an adult head are ~9-10 cm apart
    # Nose tip (30) is the most forward landmark.
    assert np.argmax(lm[:, 2]) == 30
    # Left/right pairs mirror each other across x = 0 (outer and inner eye corners, mouth corners,
    # brow ends, jaw ends).
    for right, left in ((36, 45), (39, 42), (48, 54), (17, 26), (0, 16), (31, 35)):
        mirrored = lm[left] * np.array([-1.0, 1.0, 1.0])
        assert np.linalg.norm(lm[right] - mirrored) < 0.05 * inter_ocular, (right, left)
    # Midline points sit on x = 0: nose bridge, nose tip, lips, chin.
    assert np.all(np.abs(lm[[27, 28, 29, 30, 33, 51, 57, 62, 66, 8], 0]) < 0.02 * inter_ocular)
    # Vertical order: brows above eyes above nose tip above mouth above chin.
    assert lm[17:27, 1].min() > lm[36:48, 1].max()
    assert lm[36:48, 1].min() > lm[30, 1] > lm[48:68, 1].max() > lm[8, 1]
    assert np.argmin(lm[:17, 1]) == 8  # chin is the lowest jaw point
    # Jawline substitutes are surface vertices on the same side as the points they replace.
    assert np.all(ict_model.mean[ict_model.jaw_right, 0] <= 0) or np.all(
        ict_model.mean[ict_model.jaw_right, 0] >= 0
    )
    assert np.sign(ict_model.mean[ict_model.jaw_right[0], 0]) == np.sign(lm[0, 0])
    assert np.sign(ict_model.mean[ict_model.jaw_left[-1], 0]) == np.sign(lm[16, 0])


def test_normalized_mean_coords_span_the_unit_cube(ict_model):
    ncc = ict_model.normalized_mean_coords
    assert ncc.shape == (11248, 3) and ncc.dtype == np.float32
    np.testing.assert_allclose(ncc.min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ncc.max(axis=0), 1.0, atol=1e-6)
    # The nose tip is the most forward surface point region: its z colour is near 1.
    assert ncc[ict_model.landmarks[30], 2] > 0.95


def test_open_format_round_trip(tmp_path, ict_model):
    path = tmp_path / "ict.npz"
    save_morphable_model(ict_model, path)
    again = load_morphable_model(path)
    for name in ("mean", "identity_basis", "expression_basis", "faces", "landmarks", "jaw_left"):
        assert np.array_equal(getattr(again, name), getattr(ict_model, name)), name
    assert again.expression_names == ict_model.expression_names
    surface = again.surface()
    assert surface.n_vertices == 11248 and surface.identity_basis.shape == (100, 11248, 3)


def test_missing_model_error_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAD2HEAD_3DMM", str(tmp_path / "nope.npz"))
    monkeypatch.chdir(tmp_path)
    from model.face3d import loader as mm

    monkeypatch.setattr(mm, "DEFAULT_MODEL_CANDIDATES", ("missing/model.npz",))
    with pytest.raises(ModelNotFoundError) as err:
        load_morphable_model()
    message = str(err.value)
    assert "nope.npz" in message and "missing/model.npz" in message and "ICT-FaceKit" in message
    with pytest.raises(ModelNotFoundError, match="ICT-FaceKit"):
        load_morphable_model(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match="FaceXModel"):
        ict_facekit.import_obj_folder(tmp_path)
