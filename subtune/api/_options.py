"""The option objects `train` and `profile` take (defined in subtune.training.options): the method
(SubTuning, Head2Toe, LoRA, Linear, Full), the data, the training schedule, Ray."""

from subtune.training.options import (DataOptions, Full, Head2Toe, Linear, LoRA, RayOptions, SubTuning,
                                      TrainingOptions)

__all__ = ["DataOptions", "Full", "Head2Toe", "Linear", "LoRA", "RayOptions", "SubTuning", "TrainingOptions"]
