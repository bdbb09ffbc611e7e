"""Reenact a person with a source video: the person's head driven by the source's expressions and pose.

    python -m jobs.reenact --source VIDEO_URI --target IDENTITY_OR_MODEL_URI --out OUT.mp4 \\
        [--mode full|expression] [--background target|IMAGE|COLOUR] [--side-by-side] [--set k=v]
    python -m jobs.reenact --pairs PAIRS.csv --out OUT_DIR ...   # many pairs as Ray tasks

``--target`` is a person's name (their model under ``--people``, the fine-tuning job's storage path) or a
person model's URI. ``--pairs`` runs every (source, target[, out]) row of a CSV as a Ray task into the
folder ``--out``, with a ``reenact.csv`` of their results. Outputs are H.264 mp4 with the source's audio,
marked as synthetic in their metadata and, unless ``--set watermark=false``, visibly. Use it only with
consent: see the README's acceptable use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.errors import VideoRejected
from pipeline.finetune.person_model import person_model_uri
from pipeline.reenact.ray_reenact import read_pairs, reenact_pairs
from pipeline.reenact.reenact import ReenactConfig, reenact, reenact_stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reenact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="the driving video (local path or URI)")
    parser.add_argument("--target", help="a person's name or a person model URI")
    parser.add_argument("--pairs", help="a CSV of source,target[,out] rows, run as Ray tasks")
    parser.add_argument("--out", required=True, help="the output mp4 (with --pairs: a folder)")
    parser.add_argument("--people", default="outputs/finetune", help="where people's models are (by name)")
    parser.add_argument("--mode", choices=["full", "expression"], default=None)
    parser.add_argument("--background", default=None, help="target, a colour (black, #00b140) or an image")
    parser.add_argument("--side-by-side", action="store_true", help="source | NMFC | result")
    parser.add_argument("--stream", action="store_true", help="frame by frame, in real time")
    add_config_arguments(parser, ReenactConfig, "pose.smooth_sigma_frames=2.0")
    args, cfg = parse_job_args(parser, ReenactConfig, argv)
    if not args.pairs and not (args.source and args.target):
        parser.error("give --source and --target, or --pairs")
    changes = {"mode": args.mode, "background": args.background, "side_by_side": args.side_by_side or None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if args.pairs:
        return _pairs(args, cfg)
    target = args.target if args.target.endswith(".pt") else person_model_uri(args.people, args.target)
    if args.dry_run:
        print(config_yaml(cfg))
        print(f"{storage.redact(args.source)} drives {storage.redact(target)} -> {storage.redact(args.out)}")
        return 0
    try:
        run = reenact_stream if args.stream else reenact
        summary = run(args.source, target, args.out, cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except VideoRejected as err:  # the source cannot drive anyone: no face, too short, ...
        print(f"error: --source {storage.redact(args.source)}: {err.reason}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _pairs(args: argparse.Namespace, cfg: ReenactConfig) -> int:
    try:
        if args.dry_run:
            print(config_yaml(cfg))
            for pair in read_pairs(args.pairs, args.people, args.out):
                print(f"{storage.redact(pair['source'])} drives {storage.redact(pair['person'])}")
            return 0
        rows = reenact_pairs(args.pairs, args.people, args.out, cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r["status"] != "ok"]
    print(json.dumps({"pairs": len(rows), "ok": len(rows) - len(failed), "failed": len(failed)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
