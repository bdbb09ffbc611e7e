"""Fine-tune the trained video renderer to many new people, one model each (paper section 3.4).

    python -m jobs.finetune --config configs/finetune.yaml --init CHECKPOINT_URI --data SHARDS_URI \\
        --identities all|NAME,NAME|FILE [--frames N] [--set k=v]

``--data`` is a preprocessing output, or a folder / prefix / manifest of raw videos (preprocessed first).
Each person's model, checkpoints and status go to ``run.storage_path/persons/<identity>/``; the batch ends
with ``finetune.csv``. Rerun the same command after a stop: finished people are skipped, an interrupted one
resumes. Submit it with ``ray job submit`` to run the people in parallel on a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from infra.config import add_config_arguments, config_yaml, parse_job_args
from pipeline.finetune.batch import is_shards, plan_batch, prepare_data, resolve_identities, run_batch
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.person_model import STATUS_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="the meta-learned checkpoint (jobs.train's)")
    parser.add_argument("--data", required=True, help="preprocessing output, or raw videos (URI)")
    parser.add_argument("--identities", default="all", help="all, NAME,NAME, or a file of names")
    parser.add_argument("--frames", type=int, default=None, help="training frames per person (N)")
    add_config_arguments(parser, FinetuneConfig, "budget.epochs=10", default_config="configs/finetune.yaml")
    args, cfg = parse_job_args(parser, FinetuneConfig, argv)
    if args.frames is not None:
        cfg = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, train_frames=args.frames))
    try:
        if args.dry_run:
            print(config_yaml(cfg))
            if not is_shards(args.data):
                print(f"--data holds videos: they would be preprocessed into {cfg.run.storage_path}/shards")
                return 0
            todo, done = plan_batch(cfg, args.init, args.data, resolve_identities(args.identities, args.data))
            print(f"to fine-tune: {todo}; done already: {[s.identity for s in done]}")
            return 0
        data = prepare_data(cfg, args.data)
        statuses = run_batch(cfg, args.init, data, resolve_identities(args.identities, data))
    except (ValueError, FileNotFoundError) as err:  # user errors: no data, unknown people, missing init
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [s.identity for s in statuses if s.status == STATUS_FAILED]
    print(f"{len(statuses) - len(failed)} people ok or done, {len(failed)} failed {failed or ''}")
    return 0 if not failed or len(failed) < len(statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
