"""Command line: ``gradsift warmup | build | select | train | evaluate | experiment | report | inspect | run |
demo``. Each subcommand maps one-to-one onto
a stage's config dataclass, whose field help strings and defaults are the flags' help and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
import warnings
from pathlib import Path

from gradsift import __version__
from gradsift.utils.errors import GradsiftError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class MethodNames:
    """``select --method``'s choices, asked of the method registry only when argparse checks a value or
    prints them: the registry imports torch, which the other commands' --help need not wait for."""

    def _names(self) -> list[str]:
        from gradsift.selection.methods import selectable

        return selectable()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def add_config_arguments(parser: argparse.ArgumentParser, cls, choices: dict | None = None) -> None:
    """One flag per dataclass field: lists take several values, Literals become choices, bools switches
    (``--x``; a bool whose default is None, meaning "as the method does", also ``--no-x``);
    ``choices`` gives a field's choices from elsewhere (shown as its name in capitals in the usage line)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default_factory() if f.default is dataclasses.MISSING else f.default)
        kw: dict = {"help": f.metadata.get("help", ""), "dest": f.name}
        if kind is bool:
            parser.add_argument(_flag(f.name), action="store_true" if default is not None
                                else argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(kind) is list:
            kind, kw["nargs"] = typing.get_args(kind)[0], "+"
        if typing.get_origin(kind) is typing.Literal:
            kw["choices"], kind = typing.get_args(kind), str
        if f.name in (choices or {}):
            kw["choices"], kw["metavar"] = choices[f.name], f.name.upper()
        if required:
            kw["required"] = True
        else:
            kw["default"] = default
            kw["help"] += f" (default: {default})"
        parser.add_argument(_flag(f.name), type=kind, **kw)


def _config(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    from gradsift.config import BuildConfig, EvaluateConfig, SelectConfig, TrainConfig, WarmupConfig

    parser = argparse.ArgumentParser(prog="gradsift", description="Select the training data that most helps a "
                                     "target capability, with LESS gradient features.")
    parser.add_argument("--version", action="version", version=f"gradsift {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also show the libraries' own warnings, log messages and weight-loading bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("warmup", help="LoRA warmup on a random fraction of the pool; one checkpoint per epoch")
    add_config_arguments(p, WarmupConfig)
    p.set_defaults(config_class=WarmupConfig)

    p = command("build", help="gradient feature store of a dataset at every checkpoint of a run")
    add_config_arguments(p, BuildConfig)
    p.set_defaults(config_class=BuildConfig)

    p = command("select", help="score the pool against targets and write the top examples")
    add_config_arguments(p, SelectConfig, choices={"method": MethodNames()})
    p.set_defaults(config_class=SelectConfig)

    p = command("train", help="fine-tune a model (LoRA, or --full) on records, e.g. a selection")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(config_class=TrainConfig)

    p = command("evaluate", help="test loss and accuracy of a model (with --adapter) on held-out records")
    add_config_arguments(p, EvaluateConfig)
    p.set_defaults(config_class=EvaluateConfig)

    p = command("experiment", help="targets x methods x fractions x seeds: select, train, evaluate")
    p.add_argument("config", type=Path, help="experiment YAML (see gradsift.experiment)")
    p.add_argument("--output", type=Path, required=True, help="experiment folder (resumed if it exists)")

    p = command("report", help="DIR/report.html for a selection or an experiment folder")
    p.add_argument("dir", type=Path, help="a selection folder (from select) or an experiment folder")

    p = command("inspect", help="what a store, run, selection, evaluation or experiment folder holds; --verify: intact?")
    p.add_argument("path", type=Path, help="a folder written by gradsift")
    p.add_argument("--verify", action="store_true", help="recompute the checksums of its files and of the files it "
                   "read; exit 1 naming any file that is missing or changed")

    p = command("run", help="the whole pipeline from one YAML config file")
    p.add_argument("config", type=Path, help="pipeline YAML (see gradsift.pipeline)")

    p = command("demo", help="the whole pipeline on SmolLM2-135M with real pool and target data")
    p.add_argument("--output", type=Path, default=Path("gradsift-demo"), help="output folder (default: gradsift-demo)")
    return parser


def quiet_libraries() -> None:
    """gradsift's own progress bars and results only: torch, transformers and peft warnings, advisory
    log messages and weight-loading bars are for ``--verbose``. Set before those libraries load."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:  # already imported (by a caller of main()): the settings above came late
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|transformers|peft|accelerate|huggingface_hub)\b")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        if args.command == "warmup":
            from gradsift.training.warmup import warmup

            run = warmup(_config(args.config_class, args))
            print(f"run: {run.path} ({len(run.checkpoints)} checkpoints, LRs "
                  f"{', '.join(f'{c.lr:.3g}' for c in run.checkpoints)})")
        elif args.command == "build":
            from gradsift.features.build import build

            store = build(_config(args.config_class, args))
            print(f"store: {store.path} ({len(store.index)} rows x {store.manifest['projection']['dim']} dims, "
                  f"{len(store.checkpoints)} checkpoints)")
        elif args.command == "select":
            from gradsift.report import print_selection
            from gradsift.selection.select import select

            for selection in select(_config(args.config_class, args)):
                print_selection(selection)
        elif args.command == "train":
            from gradsift.training.train import train

            run = train(_config(args.config_class, args))
            print(f"trained: {run.path} ({len(run.checkpoints)} epochs; final "
                  f"{'model' if run.full else 'adapter'} in {run.path})")
        elif args.command == "evaluate":
            from gradsift.evaluation.evaluate import evaluate

            summary = evaluate(_config(args.config_class, args))
            accuracy = "n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.3f}"
            loss = "n/a" if summary["loss"] is None else f"{summary['loss']:.4f}"
            print(f"evaluated {summary['examples']} examples: loss {loss}, accuracy {accuracy} -> {args.output}")
        elif args.command == "experiment":
            from gradsift.experiment import load_experiment, run_experiment

            run_experiment(load_experiment(args.config), args.output)
            print((args.output / "results.md").read_text())
            print(f"results: {args.output}/results.csv, results.md, results.png")
        elif args.command == "report":
            from gradsift.report import write_report

            print(f"report: {write_report(args.dir)}")
        elif args.command == "inspect":
            from gradsift.inspection import inspect, print_inspection

            found = inspect(args.path, args.verify)
            print_inspection(found[0])
            problems = [p for f in found for p in f.problems]
            for problem in problems:
                print(f"gradsift inspect: {problem}", file=sys.stderr)
            if args.verify:
                checked = sum(f.verified for f in found)
                print(f"verify: {checked} files match their checksums, {len(problems)} problems"
                      + (f" (in {len(found)} folders)" if len(found) > 1 else ""))
            return 1 if problems else 0
        elif args.command == "run":
            from gradsift.pipeline import load_pipeline, run_pipeline
            from gradsift.report import print_selection

            for selection in run_pipeline(load_pipeline(args.config)):
                print_selection(selection)
        elif args.command == "demo":
            from gradsift.demo import demo

            demo(args.output)
    except GradsiftError as e:
        print(f"gradsift {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
