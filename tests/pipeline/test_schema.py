"""pipeline/schema.py is the one definition of the shard and per-unit columns."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa

from pipeline import schema

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in the file except docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _reads_or_writes_shards(path: Path) -> bool:
    """Whether the module imports the schema or pyarrow. The others keep tables of their own (reenact.csv's
    ``source`` and ``status``) whose words may equal a column's."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return any(name == "pipeline.schema" or name.split(".")[0] == "pyarrow" for name in imported)


def test_no_column_name_is_spelled_outside_the_schema_module():
    columns = set(schema.FRAME_SCHEMA.names) | set(schema.VIDEO_SCHEMA.names)
    modules = sorted(p for p in PIPELINE.rglob("*.py") if p.name != "schema.py")
    scanned = [path for path in modules if _reads_or_writes_shards(path)]
    assert {"shard_writer.py", "data.py", "self_reenactment.py"} <= {p.name for p in scanned}
    found = [
        f"{path.relative_to(PIPELINE.parent)}:{line}: {value!r}"
        for path in scanned
        for line, value in _string_literals(path)
        if value in columns
    ]
    assert not found, "use the pipeline.schema constants / VideoRecord fields instead:\n" + "\n".join(found)


def test_the_literal_scan_sees_literals(tmp_path):
    """The scan above would catch a column name used as a dict key (and skips docstrings)."""
    module = tmp_path / "m.py"
    module.write_text('"""video_id"""\n\ndef f(r):\n    """status"""\n    return r["video_id"]\n')
    assert _string_literals(module) == [(5, "video_id")]


def test_video_schema_is_built_from_the_record_and_round_trips():
    record = schema.VideoRecord(
        video_id="v_seg001_part01", source_video_id="v", segment=1, segments=2, track_part=1, track_parts=2,
        identity_coefficients=(0.5, -1.0), kept_frames=9, config_hash="h",
    )  # fmt: skip
    assert schema.VideoRecord.from_dict(record.as_dict()) == record
    table = pa.Table.from_pylist([record.as_dict()], schema=schema.VIDEO_SCHEMA)
    assert table.schema.names == [f for f in record.as_dict()]
    # A record written before a column existed still reads, with that column's default.
    old = {k: v for k, v in record.as_dict().items() if k not in ("track_part", "track_parts")}
    assert schema.VideoRecord.from_dict(old).track_parts == 1
    assert schema.unit_id("v", 1, 2, 1, 2) == record.video_id and schema.unit_id("v", 0, 1) == "v"


def test_a_video_is_complete_when_every_part_of_every_segment_has_a_record():
    def unit(segment, part, parts):
        return schema.VideoRecord(segment=segment, segments=2, track_part=part, track_parts=parts)

    assert not schema.video_complete([])
    assert not schema.video_complete([unit(0, 0, 1)])  # segment 1 missing
    assert schema.video_complete([unit(0, 0, 1), unit(1, 0, 2), unit(1, 1, 2)])
    assert not schema.video_complete([unit(0, 0, 1), unit(1, 1, 2)])  # part 0 of segment 1 missing
