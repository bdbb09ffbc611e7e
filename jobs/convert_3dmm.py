"""Convert a 3D morphable model to the open head2head-3dmm format and draw its landmarks.

    python -m jobs.convert_3dmm --output outputs/3dmm [--set model.path=/path/to/ICT-FaceKit]

Reads the packed ICT npz, an ICT-FaceKit OBJ folder or a head2head-3dmm npz; writes ``model.npz``,
``summary.json``, ``landmarks.png`` (front and side views of the mean face with its 68 landmarks) and
the resolved ``config.yaml`` under ``--output`` (a local path or URI).
"""

from __future__ import annotations

import argparse
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.preprocess.convert_3dmm import ConvertConfig, convert_3dmm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.convert_3dmm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="output folder (local path, file:// or s3:// URI)")
    add_config_arguments(parser, ConvertConfig, "preview_size_px=256")
    args, cfg = parse_job_args(parser, ConvertConfig, argv)
    if args.dry_run:
        print(config_yaml(cfg))
        print(f"would write model.npz, summary.json, landmarks.png to {storage.redact(args.output)}")
        return 0
    summary = convert_3dmm(cfg, args.output)
    print(json.dumps(summary))
    print(f"wrote {storage.redact(storage.join(args.output, 'model.npz'))} and landmarks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
