"""Preprocess face videos into training shards on Ray Data.

    python -m jobs.preprocess --config configs/preprocess.yaml --input URI --output URI [--set k=v]

Locally this starts an in-process Ray; against a cluster submit the same command:

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.preprocess --config configs/preprocess.yaml --input s3://bucket/videos --output s3://bucket/shards

``--input`` is a folder or S3 prefix of videos (identity = file stem) or a CSV/Parquet manifest with
``path`` and optional ``identity`` columns. Outputs (see pipeline/schema.py): shards/, records/,
videos.parquet, summary.json, contact_sheets/, config.yaml. Reruns skip videos already done with the
same config; bad videos are recorded with a reason and the rest finish.
"""

from __future__ import annotations

import argparse
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig, plan, resolve_model, run_preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", required=True, help="folder/prefix of videos or a .csv/.parquet manifest (URI)"
    )
    parser.add_argument("--output", required=True, help="output folder (local path, file:// or s3:// URI)")
    add_config_arguments(parser, PreprocessJobConfig, "preprocess.fit.w_smooth=0.01")
    args, cfg = parse_job_args(parser, PreprocessJobConfig, argv)
    try:
        if args.dry_run:
            cfg = resolve_model(cfg)
            sources, todo, cfg_hash = plan(cfg, args.input, args.output)
            print(config_yaml(cfg))
            print(f"config hash {cfg_hash}: {len(sources)} videos, {len(todo)} to process")
            for source in todo:
                print(f"  {source.video_id}  {storage.redact(source.uri)}  identity={source.identity}")
            return 0
        summary = run_preprocess(cfg, args.input, args.output)
    except ValueError as err:  # user errors: bad input, bad manifest
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    out = storage.redact(args.output)
    print(f"shards: {storage.join(out, 'shards')}  contact sheets: {storage.join(out, 'contact_sheets')}")
    return 0 if summary["videos_ok"] > 0 or summary["videos"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
