"""A task delta: what a task changes of its base, and the PyTorch modules it becomes (below
everything that runs a task; subtune.formats reads and writes it as a file).

    task        TaskDelta, the task in memory, and its recorded preprocessing (check_preprocess)
    validate    validate_task: whether a task fits its base
    make        make_task, make_tap_task: a TaskDelta from trained modules
    modules     a task's tuned blocks, head and taps as modules
    standalone  a task as its own full model (TaskNet, TapTaskNet): the one implementation the
                compiler's reference, the benchmarks and training's networks share
    pruned      the contract for pruned blocks: rebuild a block at its pruned size from the task file
    attention   multi-head attention with a prunable number of heads (what pruned ViT blocks hold)
"""

from subtune.delta.make import make_tap_task, make_task
from subtune.delta.task import RESERVED_NAMES, TASK_KINDS, TASK_NAME, TaskDelta, check_preprocess
from subtune.delta.validate import validate_task

__all__ = ["RESERVED_NAMES", "TASK_KINDS", "TASK_NAME", "TaskDelta", "check_preprocess", "make_tap_task", "make_task",
           "validate_task"]
