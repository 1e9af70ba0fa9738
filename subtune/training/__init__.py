"""SubTuning training: data in, task deltas (and profiles, selections, picks) out.

    data.py      load_dataset(spec, split, ...): Fashion-MNIST, image folders, CIFAR; limits,
                 validation splits, label maps (stable API, used by calibration and pruning)
    sources.py   the on-disk readers behind data specs
    network.py   the trainable networks (SubTuning, linear probe, full finetuning) and the
                 numbering of backbone points where the frozen part is cut
    cache.py     cached activations (paper §3.2): frozen layers run once, in memory or on disk
    augment.py   image augmentation (forces the full forward path)
    trainer.py   Trainer and the training loop (paper Appendix A defaults)
    greedy.py    greedy block selection (the slides' algorithm), a policy over a score callback
    profile.py   the finetuning profile (§2); plot.py draws it
    active.py    classification-margin selection for active learning (§4.2)
    outputs.py   writing task deltas and full models
    options.py   command-line options shared by `subtune train / profile / select`
"""
