"""The ``hf-monosem`` console command (installed with the package; also ``python -m hf_monosem``).

``hf-monosem report --model_name_or_path <Hub id or folder> --dataset_name <data>``: the paper's question
on your model and your data (:mod:`hf_monosem.report`). A bad argument is refused with exit status 2 and
one line naming the value and what is allowed, before any work.

Example:
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: hf-monosem <command> [options]
    ...
    0
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "show_library_logs"]

USAGE = """usage: hf-monosem <command> [options]

commands:
  report    do monosemantic features buy robustness on your model and your data? (hf-monosem report --help)"""


def show_library_logs() -> None:
    """The package's INFO lines (cache hits, stage times) on stdout, once per process (the command's and the
    benchmark's)."""
    logger = logging.getLogger("hf_monosem")
    if not any(getattr(h, "_hf_monosem_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._hf_monosem_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-monosem <command>``; returns the exit status (0 done, 2 refused)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command != "report":
        print(f"hf-monosem: error: unknown command {command!r}; allowed: report", file=sys.stderr)
        return 2
    from .cached.distributed import end_process_group
    from .report.arguments import parse_report_arguments
    from .report.inputs import load_report_inputs
    from .report.model_card import push_report_to_model_card
    from .report.publish import push_report_to_hub
    from .report.run import run_report

    try:  # every refusal is here, before the backbone's weights are read
        args = parse_report_arguments(rest)
        inputs = load_report_inputs(args)
    except ValueError as error:
        print(f"hf-monosem report: error: {error}", file=sys.stderr)
        return 2
    show_library_logs()
    results = run_report(args, inputs)  # empty in the other processes of accelerate launch
    if args.push_to_hub and args.hub_model_id and results:
        url = push_report_to_hub(args.output_dir, args.hub_model_id, args.token)
        print(f"[hf-monosem report] pushed to {url}")
    if args.push_to_hub and args.model_card_repo_id and results:
        url = push_report_to_model_card(
            args.output_dir,
            args.model_card_repo_id,
            token=args.token,
            create_pr=args.model_card_create_pr,
            report_repo_id=args.hub_model_id,
        )
        print(f"[hf-monosem report] added the verdicts to the model card: {url}")
    end_process_group()  # launched: every process leaves the group together, none aborts at exit
    return 0
