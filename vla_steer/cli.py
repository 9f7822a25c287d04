"""``vla-steer``: demos, bc, train and eval from a YAML recipe.

Examples::

    vla-steer train recipes/quickstart.yaml
    vla-steer train recipes/metaworld_push_dsrl_sac.yaml train.seed=1 train.output_dir=runs/sac1
    accelerate launch --cpu --num_processes 2 -m vla_steer train recipes/quickstart.yaml
    vla-steer eval runs/quickstart --episodes 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vla_steer.config import RecipeError, load_recipe, recipe_from_dict


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="override any recipe field, e.g. train.seed=1 algorithm.name=dsrl_sac")


def cmd_demos(args) -> None:
    from vla_steer.pipeline import ensure_demos

    recipe = load_recipe(args.recipe, args.overrides)
    print(ensure_demos(recipe))


def cmd_bc(args) -> None:
    from vla_steer.pipeline import ensure_base

    recipe = load_recipe(args.recipe, args.overrides)
    print(ensure_base(recipe))


def _summary(results: dict) -> str:
    base, final = results["base"], results["final"]
    lines = [f"{results['task']} | {results['method']} | seed {results['seed']} | {results['env_steps']} env steps | "
             f"{results['wall_time_s'] / 60:.1f} min",
             f"  {'':10s} {'success':>8s} {'return':>9s} {'entropy':>8s}"]
    for label, m in (("base", base), ("steered", final)):
        lines.append(f"  {label:10s} {m['success_rate']:8.2f} {m['return_mean']:9.1f} {m['action_entropy']:8.2f}")
    return "\n".join(lines)


def cmd_train(args) -> None:
    from vla_steer.training import SteeringTrainer

    recipe = load_recipe(args.recipe, args.overrides)
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    if trainer.accelerator.is_main_process:
        print(_summary(results))
        print(f"  results: {Path(recipe.train.output_dir) / 'results.json'}")
        print(f"  plot:    {results['plot']}")


def cmd_eval(args) -> None:
    from vla_steer.training import SteeringTrainer

    run_dir = Path(args.run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no recipe.json); pass the train.output_dir of a run")
    overrides = [f"train.eval_episodes={args.episodes}"] if args.episodes else []
    overrides += [f"train.eval_best_of_k={args.best_of_k}"] if args.best_of_k else []
    recipe = recipe_from_dict(json.loads(recipe_file.read_text()), overrides + [f"train.output_dir={run_dir}"])
    trainer = SteeringTrainer(recipe)
    if not trainer.load_checkpoint():
        raise FileNotFoundError(f"no checkpoint in {trainer.checkpoint_dir}")
    report = {"base": trainer.evaluate("base"), "steered": trainer.evaluate("policy")}
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-steer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (("demos", cmd_demos, "generate (or find cached) demonstrations as a LeRobotDataset"),
                                ("bc", cmd_bc, "train (or find cached) the behaviour-cloned base policy"),
                                ("train", cmd_train, "demos + BC base + steering with RL, then evaluation and plot")):
        p = sub.add_parser(name, help=help_text)
        _add_recipe_args(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("eval", help="evaluate a trained run's head against its base")
    p.add_argument("run_dir", help="a run's train.output_dir")
    p.add_argument("--episodes", type=int, default=None, help="episodes per evaluation (default: the recipe's)")
    p.add_argument("--best-of-k", type=int, default=None, metavar="K",
                   help="critic-guided selection: the critic picks the best of K head proposals per observation")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (RecipeError, FileNotFoundError) as exc:
        print(f"vla-steer: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
