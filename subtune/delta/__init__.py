"""Task deltas as PyTorch modules (sits beside subtune.formats, below everything that runs a task).

    modules     a task's tuned blocks, head and taps as modules
    standalone  a task as its own full model (TaskNet, TapTaskNet): the one implementation the
                compiler's reference, the benchmarks and training's networks share
    pruned      the contract for pruned blocks: rebuild a block at its pruned size from the task file
    attention   multi-head attention with a prunable number of heads (what pruned ViT blocks hold)
"""
