"""Channel pruning of a task's tuned blocks (the paper's §5.2), with Torch-Pruning.

    analysis.py   the channel groups inside a block, and their L1/L2 importance (Torch-Pruning)
    plan.py       how many of each group to keep: local/global scope, round_to (policy only)
    prune.py      prune_task: analyse -> plan -> apply -> a self-describing pruned task
    (the pruned-task contract, rebuilding a smaller block from the file alone, and self-attention
    whose heads can be removed live in subtune/delta/: every package that runs a task needs them)
    recover.py    recovery training of the pruned blocks and head, and accuracy
    sweep.py      ratios x scope x norm: accuracy against the fraction of parameters kept

Only channels inside a block are pruned: a block's input and output widths stay, so the shared
layers and the batch concatenation of the compiled graph never change.
"""
