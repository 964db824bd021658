"""What rendering clips for people costs a --teacher human run, and whether it stalls training.

A human-fed run renders each query's two clips once, when the query is posted, in a background
thread (:class:`prefenv.human.HumanFeedback`), while the agent keeps training. This benchmark
takes one round of the default run (``prefenv train`` on ``--env``, its preset, the round's env
steps) and measures, in one process:

- ``render``: presenting ``--queries`` pairs alone (two H.264 clips each), seconds and ms/query;
- ``train``: the agent training one round's steps alone;
- ``both``: the two at once, as a run does it: the render thread beside ``agent.learn``;
  ``train_slowdown`` = both-time of training / train-alone time.

``render_share`` = render seconds / (render + train seconds) is the share of a round's work the
clips take; the overlap row shows whether training waits for them (it does not: rendering runs
beside it, so the round's wall-clock grows only by what the shared cores lose).

Usage:
    MUJOCO_GL=egl python benchmarks/bench_label_render.py [--env prefenv/HalfCheetah-v0]
        [--queries N] [--out benchmarks/results/label_render.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="prefenv/HalfCheetah-v0")
    parser.add_argument("--queries", type=int, default=None,
                        help="pairs to present (default: the run's largest round with its gold "
                             "questions: 92 + 10 for the default run)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/label_render.json"))
    args = parser.parse_args()

    from prefenv.app.budget import plan_budget
    from prefenv.app.media import presenter_for
    from prefenv.app.runs import TrainingRun
    from prefenv.app.spec import TrainSpec
    from prefenv.loop import query_schedule
    from prefenv.sampling import sample_segment_pairs

    spec = TrainSpec(env=args.env).with_preset()
    if args.queries is None:
        largest = max(query_schedule(spec.loop_config()))
        args.queries = largest + math.ceil(spec.gold_rate * largest)
    folder = Path(tempfile.mkdtemp(prefix="bench_label_render_"))
    run = TrainingRun(spec, folder / "run")
    run.agent.learn(spec.initial_steps)  # the initial policy's episodes are what gets shown
    pairs = sample_segment_pairs(run.recorder.trajectories, args.queries, spec.segment_length,
                                 rng=np.random.default_rng(0))  # fmt: skip
    round_steps = plan_budget(spec).steps[1]  # the first feedback round's training
    clips = folder / "clips"
    clips.mkdir()

    def render(tag: str) -> float:
        presenter = presenter_for(spec.env, spec.env_kwargs)  # in this thread: its GL context
        start = time.perf_counter()
        for i, (left, right) in enumerate(pairs):
            presenter.present(left, right, clips, f"{tag}{i:04d}")
        return time.perf_counter() - start

    def train() -> float:
        start = time.perf_counter()
        run.agent.learn(round_steps)
        return time.perf_counter() - start

    render_alone = render("a")
    train_alone = train()
    rendered: dict[str, float] = {}
    worker = threading.Thread(target=lambda: rendered.update(seconds=render("b")))
    worker.start()
    train_both = train()
    worker.join()
    result = {
        "env": spec.env,
        "queries": args.queries,
        "round_steps": round_steps,
        "render_seconds": round(render_alone, 2),
        "render_ms_per_query": round(1000 * render_alone / args.queries, 1),
        "train_seconds": round(train_alone, 2),
        "render_share": round(render_alone / (render_alone + train_alone), 3),
        "both_train_seconds": round(train_both, 2),
        "both_render_seconds": round(rendered["seconds"], 2),
        "train_slowdown": round(train_both / train_alone, 3),
        "clip_bytes_per_query": int(
            sum(f.stat().st_size for f in clips.iterdir()) / (2 * args.queries)
        ),
        "load_average": os.getloadavg(),
        "cores": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| env | queries | render ms/query | render s | round train s | render share | "
          "train s with render beside | slowdown |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {spec.env} | {args.queries} | {result['render_ms_per_query']} | "
          f"{result['render_seconds']} | {result['train_seconds']} | {result['render_share']} | "
          f"{result['both_train_seconds']} | {result['train_slowdown']}x |")  # fmt: skip
    run.store.close()


if __name__ == "__main__":
    main()
