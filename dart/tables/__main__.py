"""python -m dart.tables FOLDER [FOLDER ...] | --wandb ENTITY/PROJECT: regenerate the paper's tables and figures."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  python -m dart.tables multirun/ten_offline               # -> multirun/ten_offline/tables/
  python -m dart.tables multirun/ten multirun/summarization --out paper_tables
  python -m dart.tables --wandb my-team/dart --group ten --out tables_ten   # online, needs a W&B API key

Writes tables.md, tables.tex (booktabs) and PNG figures. Missing numbers show as "–", never 0; failed or
unfinished runs keep their row and are listed in the notes."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dart.tables", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tables (Markdown + LaTeX) and figures from finished runs: sweep folders under multirun/, "
                    "run folders, or a W&B project; the paper's published numbers beside ours where they exist.")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="sweep or run folders holding results.json files")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from this W&B project (online) instead")
    p.add_argument("--group", help="with --wandb: only this group (a sweep's group is its sweep_name)")
    p.add_argument("--out", type=Path, help="output folder (default: FOLDER/tables with one folder; required otherwise)")
    p.add_argument("--metric", default="acc", choices=["acc", "acc_norm"], help="ten-benchmark metric (default: acc, as the paper)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dart.errors import DartError

    try:
        from dart.tables.report import make_report

        if args.wandb and args.folders:
            raise DartError("give either folders or --wandb, not both")
        if args.wandb:
            from dart.tables.wandb_runs import collect_wandb

            collection = collect_wandb(args.wandb, args.group)
            out = args.out
            if out is None:
                raise DartError("--wandb needs --out (where to write the tables)")
        else:
            if args.group:
                raise DartError("--group applies to --wandb only")
            from dart.tables.collect import collect_folders

            out = args.out
            if out is None and len(args.folders) > 1:
                raise DartError(f"{len(args.folders)} folders given: say where the tables go with --out DIR")
            collection = collect_folders(args.folders)
            out = out or Path(args.folders[0]) / "tables"
        report = make_report(collection, out, metric=args.metric, figures=not args.no_plots)
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.markdown)
    print("wrote: " + ", ".join(str(f) for f in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
