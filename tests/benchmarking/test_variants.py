from __future__ import annotations

import numpy as np
import pytest
import torch

from subtune.benchmarking.costmodel import weight_bytes
from subtune.benchmarking.variants import RuntimeSpec, VariantBuilder
from subtune.compiler.reference import reference_outputs
from subtune.errors import SubtuneError
from subtune.synthetic import synthetic_task

TORCH = RuntimeSpec("torch", threads=1)


@pytest.fixture(scope="module")
def builder(tiny_base, tiny_tasks):
    with VariantBuilder(tiny_base, tiny_tasks, input_size=(16, 16), runtime=TORCH) as b:
        yield b


@pytest.mark.parametrize("kind", ["naive", "split", "compiled"])
@pytest.mark.parametrize("k", [1, 2])
def test_every_variant_computes_what_each_model_alone_computes(builder, tiny_base, tiny_tasks, kind, k):
    images = np.random.default_rng(k).standard_normal((3, 3, 16, 16)).astype(np.float32)
    outputs = builder.variant(kind, tiny_tasks[:k]).run(images)
    model, backbone = tiny_base.build()
    expected = reference_outputs(model, backbone, tiny_tasks[:k], torch.from_numpy(images))
    for name, ref in zip(["base"] + [t.name for t in tiny_tasks[:k]], expected):
        np.testing.assert_allclose(outputs[name], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_variant_structure(builder, tiny_tasks, tiny_base):
    base = builder.variant("base")
    naive, split, compiled = (builder.variant(kind, tiny_tasks) for kind in ("naive", "split", "compiled"))
    assert (base.sessions, naive.sessions, split.sessions, compiled.sessions) == (1, 3, 4, 1)
    assert [s.source for s in split.steps] == ["images", "shared", "shared", "shared"]
    assert split.steps[0].runner.output_names() == ["shared"]
    assert naive.steps[0].runner is base.steps[0].runner  # (a) is (b)'s base session
    assert builder.variant("naive", tiny_tasks[:1]).steps[1].runner is naive.steps[1].runner  # cached across k
    assert (naive.key, compiled.tasks) == ("naive/k=2", 2)


def test_weight_bytes_follow_the_deployment(builder, tiny_tasks, tiny_base):
    model, backbone = tiny_base.build()
    full = weight_bytes(model)
    base = builder.variant("base")
    naive, split, compiled = (builder.variant(kind, tiny_tasks) for kind in ("naive", "split", "compiled"))
    assert base.weight_bytes == full
    assert naive.weight_bytes == pytest.approx(3 * full, rel=0.01)  # a full copy per task (heads differ)
    tuned = sum(weight_bytes(backbone.blocks[b - 1]) for t in tiny_tasks for b in t.blocks)
    assert full + tuned <= compiled.weight_bytes < naive.weight_bytes
    assert compiled.weight_bytes < split.weight_bytes < naive.weight_bytes


def test_release_frees_a_variants_sessions_but_not_the_base(tiny_base, tiny_tasks):
    with VariantBuilder(tiny_base, tiny_tasks, input_size=(16, 16), runtime=TORCH) as b:
        base = b.variant("base")
        naive = b.variant("naive", tiny_tasks[:1])
        b.release(naive)
        assert base.steps[0].runner.is_active
        assert not naive.steps[1].runner.is_active
    assert not base.steps[0].runner.is_active


def test_bad_requests_are_user_errors(tiny_base, tiny_tasks):
    _, backbone = tiny_base.build()
    siamese = synthetic_task(tiny_base, "s", [4], siamese=True, backbone=backbone)
    with pytest.raises(SubtuneError, match="siamese"):
        VariantBuilder(tiny_base, [siamese], input_size=(16, 16), runtime=TORCH)
    with pytest.raises(SubtuneError, match="named 't1'"):
        VariantBuilder(tiny_base, [tiny_tasks[0], tiny_tasks[0]], input_size=(16, 16), runtime=TORCH)
    with pytest.raises(SubtuneError, match="unknown runtime"):
        RuntimeSpec("tvm")
    with VariantBuilder(tiny_base, tiny_tasks[:1], input_size=(16, 16), runtime=TORCH) as b:
        with pytest.raises(SubtuneError, match="unknown variant"):
            b.variant("fused", tiny_tasks[:1])
        with pytest.raises(SubtuneError, match="needs one or more"):
            b.variant("naive", tiny_tasks[1:])  # not one of this builder's tasks
