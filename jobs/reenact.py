"""Reenact a person with a source video: the person's head driven by the source's expressions and pose.

    python -m jobs.reenact --source VIDEO_URI --target IDENTITY_OR_MODEL_URI --out OUT.mp4 \\
        [--mode full|expression] [--background target|IMAGE|COLOUR] [--side-by-side] [--set k=v]

``--target`` is a person's name (their model under ``--people``, the fine-tuning job's storage path) or a
person model's URI. The output is an H.264 mp4 with the source's audio, marked as synthetic in its metadata
and, unless ``--set watermark=false``, visibly. Use it only with consent: see the README's acceptable use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.finetune.person_model import person_model_uri
from pipeline.reenact.reenact import ReenactConfig, reenact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reenact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the driving video (local path or URI)")
    parser.add_argument("--target", required=True, help="a person's name or a person model URI")
    parser.add_argument("--out", required=True, help="the output mp4 (local path or URI)")
    parser.add_argument("--people", default="outputs/finetune", help="where people's models are (by name)")
    parser.add_argument("--mode", choices=["full", "expression"], default=None)
    parser.add_argument("--background", default=None, help="target, a colour (black, #00b140) or an image")
    parser.add_argument("--side-by-side", action="store_true", help="source | NMFC | result")
    add_config_arguments(parser, ReenactConfig, "pose.smooth_sigma_frames=2.0")
    args, cfg = parse_job_args(parser, ReenactConfig, argv)
    changes = {"mode": args.mode, "background": args.background, "side_by_side": args.side_by_side or None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    target = args.target if args.target.endswith(".pt") else person_model_uri(args.people, args.target)
    if args.dry_run:
        print(config_yaml(cfg))
        print(f"{storage.redact(args.source)} drives {storage.redact(target)} -> {storage.redact(args.out)}")
        return 0
    try:
        summary = reenact(args.source, target, args.out, cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
