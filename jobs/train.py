"""Train the video renderer on many identities (paper section 3.3) with Ray Train, tracked in MLflow.

    python -m jobs.train --config configs/train.yaml --data SHARDS_URI --run-name NAME [--set k=v]

Locally this starts Ray; against a cluster submit the same command with ``ray job submit``. ``--data`` is
the preprocessing job's output (local or s3://). The run lives in ``run.storage_path/NAME`` (config,
identity vocabulary, checkpoints, previews); rerunning the same command resumes it. ``--dry-run`` prints
the resolved config, the data found and the weights used, then exits.
"""

from __future__ import annotations

import argparse
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.train import data
from pipeline.train.config import TrainConfig
from pipeline.train.loop import pretrained_weights_statement, resolved_run_dir
from pipeline.train.ray_train import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="preprocessing output (local path or s3:// URI)")
    parser.add_argument("--run-name", required=True, help="the run's name; the same name resumes it")
    add_config_arguments(parser, TrainConfig, "optim.lr_generator=1e-4", default_config="configs/train.yaml")
    args, cfg = parse_job_args(parser, TrainConfig, argv)
    try:
        if args.dry_run:
            index = data.build_index(args.data, cfg.data)
            cfg.networks.check(cfg.data.image_px, cfg.data.clip_frames)
            print(config_yaml(cfg))
            print(f"run folder: {storage.redact(resolved_run_dir(cfg, args.run_name))}")
            print(f"data: {json.dumps(index.summary())}")
            print(pretrained_weights_statement(cfg))
            return 0
        info = run_training(cfg, args.data, args.run_name)
    except (ValueError, FileNotFoundError) as err:  # user errors: no usable data, missing weights
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in info.items() if k != "metrics"} | {"last": info["metrics"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
