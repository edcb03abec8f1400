

def test_matmul_load_ends_every_busy_window_with_a_synchronise() -> None:
    """No GPU: the matmul and the synchronise are recorders, so only the call pattern is checked."""
    calls: list[str] = []
    load = gpu_check.MatmulLoad("recorded", lambda: calls.append("matmul"),
                                lambda: calls.append("sync"))
    load.warm_up()
    assert calls[:2] == ["matmul", "sync"] and calls[-1] == "sync"
    assert load._per_step >= 1  # recorders are fast: many per ~5 ms chunk
    for run in (lambda: load.saturate(0.01), lambda: load.duty_cycle(0.04, 0.5, 0.02)):
        calls.clear()
        run()
        assert "matmul" in calls and calls[-1] == "sync"
