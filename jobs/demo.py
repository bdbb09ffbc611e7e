"""The whole chain on built-in defaults: preprocess three clips, train, fine-tune a new person, reenact them
and evaluate, in about a quarter of an hour on a 2-core laptop (``make demo``).

    python -m jobs.demo [--output outputs/demo] [--quick] [--no-download]

Inputs come from ../shared when it is there, else they are downloaded once into ~/.cache/head2head
(pinned by checksum). It prints where each artefact is and how to open the MLflow UI on the demo's runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from infra.config import add_config_arguments, config_yaml, parse_job_args
from infra.fetch import FetchError
from pipeline.demo import run_demo


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    quick: bool = False  # the test suite's size: the same chain in a couple of minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/demo", help="the demo's folder (local)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (what the tests use)")
    parser.add_argument("--shared", default=None, help="a ../shared folder to take the inputs from")
    parser.add_argument("--no-download", action="store_true", help="never download the inputs")
    add_config_arguments(parser, DemoConfig, "quick=true")
    args, cfg = parse_job_args(parser, DemoConfig, argv)
    if args.dry_run:
        print(config_yaml(cfg))
        return 0
    try:
        run_demo(args.output, args.quick or cfg.quick, args.shared, not args.no_download)
    except FetchError as err:  # the inputs are missing and cannot be downloaded: what to get, from where
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
