"""Forget a person: remove everything the system holds about one identity.

    python -m jobs.forget --identity NAME [--data SHARDS_URI ...] [--finetune OUT ...] \\
        [--train-run RUN_DIR ...] [--backend-store-uri DB_URI] [--set tracking.tracking_uri=...]

Removes the person's shards and records, their fine-tuned model, checkpoints and status, their MLflow runs
and artifacts (purged from the store with ``--backend-store-uri``), and scrubs them from training runs
(W's row, the vocabulary, previews). Prints what it removed as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from infra.tracking import TrackingConfig, local_store_uri
from pipeline.finetune.forget import forget


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.forget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", required=True, help="the person's identity name")
    parser.add_argument("--data", action="append", default=[], help="a preprocessing output (repeatable)")
    parser.add_argument("--finetune", action="append", default=[], help="a fine-tuning storage path")
    parser.add_argument("--train-run", action="append", default=[], help="a training run folder")
    parser.add_argument("--backend-store-uri", default=None, help="the MLflow server's database, to purge")
    add_config_arguments(parser, ForgetConfig, "tracking.enabled=false")
    args, cfg = parse_job_args(parser, ForgetConfig, argv)
    if args.dry_run:
        print(config_yaml(cfg))
        print(f"would forget {args.identity} in {args.data + args.finetune + args.train_run}")
        return 0
    try:
        # Without a tracking URI, the fine-tuning job's embedded store under its (first, local) folder.
        local = [uri for uri in args.finetune if storage.is_local(uri)]
        report = forget(
            args.identity, tuple(args.data), tuple(args.finetune), tuple(args.train_run), cfg.tracking,
            tracking_default_uri=local_store_uri(local[0]) if local else None,
            backend_store_uri=args.backend_store_uri,
        )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
