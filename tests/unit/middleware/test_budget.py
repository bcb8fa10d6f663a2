from middleware.budget import RetryBudget


def test_a_quiet_gateway_may_still_retry_up_to_the_minimum():
    budget = RetryBudget(ratio=0.2, min_concurrent=3)
    with budget.call():
        assert [budget.acquire() for _ in range(4)] == [True, True, True, False]
    assert budget.refused == 1


def test_under_load_retries_in_flight_are_capped_at_the_ratio_of_calls():
    budget = RetryBudget(ratio=0.2, min_concurrent=3)
    calls = [budget.call() for _ in range(50)]
    for call in calls:
        call.__enter__()
    granted = sum(budget.acquire() for _ in range(30))
    assert granted == 10
    for call in calls:
        call.__exit__(None, None, None)
    assert budget.calls == 0


def test_a_released_retry_frees_its_place():
    budget = RetryBudget(ratio=0.0, min_concurrent=1)
    with budget.retry() as first:
        assert first
        with budget.retry() as second:
            assert not second
    with budget.retry() as again:
        assert again
    assert budget.retries == 0
