"""Stream scheduling: the order of fork, block, merge and split steps for a set of tasks.

A *stream* is a batch of activations flowing through the network. The shared stream starts as
the base's own batch; rules:
  1. Fork: at a task's first tuned block, the task takes the base chunk of the shared stream.
  2. Block: every block runs once on the shared stream, and once on each task stream whose
     range covers it, with that task's weights.
  3. Merge: after a task's last tuned block, if blocks remain, its stream joins the shared
     stream by batch concatenation, so later shared blocks run once on the bigger batch.
  4. Split: after the last block the remaining task streams join too, the neck runs once, and
     the features are split back into one chunk per stream for the heads.
Tap tasks (range None: Head2Toe, the linear probe) take no part: they never fork, and their
heads read the base chunk of the shared stream (lower.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fork:
    task: int  # index into plan.tasks
    block: int  # 1-based block the task's stream starts at


@dataclass(frozen=True)
class RunBlock:
    block: int  # 1-based
    task: int | None  # None: the shared stream with base weights


@dataclass(frozen=True)
class Merge:
    tasks: tuple[int, ...]
    after_block: int


@dataclass(frozen=True)
class Schedule:
    num_blocks: int
    steps: tuple[Fork | RunBlock | Merge, ...]
    # Chunk order of the final concatenated batch: None is the base, ints are task indices.
    final_chunks: tuple[int | None, ...]

    def describe(self) -> list[str]:
        out = []
        for s in self.steps:
            if isinstance(s, Fork):
                out.append(f"fork task{s.task} before block {s.block}")
            elif isinstance(s, RunBlock):
                out.append(f"block {s.block} on {'shared' if s.task is None else f'task{s.task}'}")
            else:
                out.append(f"merge {list(s.tasks)} after block {s.after_block}")
        return out


def schedule_streams(ranges: list[tuple[int, int] | tuple[None, None] | None], num_blocks: int) -> Schedule:
    """`ranges[i]` is task i's (first, last) block, 1-based and inclusive; None or (None, None)
    for a tap task, which gets no stream."""
    ranges = [(0, -1) if r is None or r[0] is None else r for r in ranges]  # matches no block
    steps: list[Fork | RunBlock | Merge] = []
    chunks: list[int | None] = [None]
    for block in range(1, num_blocks + 1):
        for t, (first, _) in enumerate(ranges):
            if first == block:
                steps.append(Fork(t, block))  # rule 1
        steps.append(RunBlock(block, None))  # rule 2
        for t, (first, last) in enumerate(ranges):
            if first <= block <= last:
                steps.append(RunBlock(block, t))
        ending = tuple(t for t, (_, last) in enumerate(ranges) if last == block)
        if ending and block < num_blocks:  # rule 3
            steps.append(Merge(ending, block))
            chunks.extend(ending)
    chunks.extend(t for t, (_, last) in enumerate(ranges) if last == num_blocks)  # rule 4
    return Schedule(num_blocks, tuple(steps), tuple(chunks))
