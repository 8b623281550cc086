"""The probe alone: `python -m monitor.probe scheduler --local`, and the zipapp's entry point.

Same flags, same code and same verdicts as `airflow-monitor probe`; imports only the standard
library and the image's DB driver, so the zipapp runs with an Airflow image's own Python.
"""

from __future__ import annotations

import argparse
import sys

from monitor.probe.command import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-monitor-probe",
                                     description="Liveness probe for an Airflow 3.x scheduler, triggerer or "
                                                 "dag processor: exit 1 when it is stuck.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
