"""Evaluate people's models by the paper's self-reenactment protocol on their held-out frames.

    python -m jobs.evaluate --people OUT --identities all|NAME,NAME --data SHARDS_URI --out REPORT_DIR
    python -m jobs.evaluate --model PERSON_MODEL_URI --data SHARDS_URI --out REPORT_DIR

Writes metrics.json, metrics.csv (with their estimators, versions and sample counts), frame strips and
report.html to ``--out``, and logs the tables to each person's MLflow run when tracking is on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from infra import storage
from infra.config import add_config_arguments, config_yaml, parse_job_args
from infra.tracking import TrackingConfig
from pipeline.evaluate.self_reenactment import EvaluateConfig, evaluate_people, log_to_people_runs
from pipeline.finetune.person_model import list_people, person_model_uri


@dataclasses.dataclass(frozen=True)
class EvaluateJobConfig:
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="a person model URI (repeatable)")
    parser.add_argument("--people", default=None, help="the fine-tuning job's storage path")
    parser.add_argument("--identities", default="all", help="with --people: all or NAME,NAME")
    parser.add_argument("--data", required=True, help="the preprocessing output the people came from")
    parser.add_argument("--out", required=True, help="the report's folder (local path or URI)")
    add_config_arguments(parser, EvaluateJobConfig, "evaluate.refit=false")
    args, cfg = parse_job_args(parser, EvaluateJobConfig, argv)
    models = list(args.model)
    if args.people:
        names = list_people(args.people) if args.identities == "all" else args.identities.split(",")
        models += [person_model_uri(args.people, name) for name in names]
    if not models:
        parser.error("give --model or --people")
    if args.dry_run:
        print(config_yaml(cfg))
        print(f"would evaluate {models}")
        return 0
    try:
        summary = evaluate_people(models, args.data, args.out, cfg.evaluate)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.people and cfg.tracking.enabled:
        log_to_people_runs(summary, args.people, args.out, cfg.tracking)
    print(json.dumps(summary["pooled"]["rows"]))
    print(f"report: {storage.redact(storage.join(args.out, 'report.html'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
