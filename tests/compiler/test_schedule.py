from subtune.compiler.schedule import Fork, Merge, RunBlock, schedule_streams


def test_no_tasks_is_the_base_alone():
    s = schedule_streams([], 4)
    assert s.steps == tuple(RunBlock(b, None) for b in range(1, 5))
    assert s.final_chunks == (None,)


def test_fork_merge_and_final_split_order():
    # task 0 merges back after block 3; task 1 runs to the end and never merges
    s = schedule_streams([(2, 3), (4, 6)], 6)
    assert Fork(0, 2) in s.steps and Fork(1, 4) in s.steps
    assert Merge((0,), 3) in s.steps
    assert s.steps.index(Merge((0,), 3)) < s.steps.index(RunBlock(4, None))
    assert not any(isinstance(x, Merge) and 1 in x.tasks for x in s.steps)
    assert s.final_chunks == (None, 0, 1)
    # every block runs once on the shared stream, once per covering task
    runs = [x for x in s.steps if isinstance(x, RunBlock)]
    assert len(runs) == 6 + 2 + 3


def test_tasks_ending_together_merge_in_one_concat():
    s = schedule_streams([(1, 2), (2, 2)], 4)
    merges = [x for x in s.steps if isinstance(x, Merge)]
    assert merges == [Merge((0, 1), 2)]
