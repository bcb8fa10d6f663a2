"""Sticky A/B assignment: the same subject always gets the same variant, in proportion to the weights."""

import pytest

from middleware.call import Target, Variant
from proxy.experiments.assign import pick, subject_of

A = Variant("a", (Target("p", "a", "http://p/v1"),), 50)
B = Variant("b", (Target("p", "b", "http://p/v1"),), 50)


def test_the_same_subject_always_gets_the_same_variant():
    first = pick("trial", "user-42", (A, B))
    assert all(pick("trial", "user-42", (A, B)) == first for _ in range(100))


def test_weights_split_subjects_in_proportion():
    heavy = Variant("a", A.targets, 90)
    light = Variant("b", B.targets, 10)
    names = [pick("trial", f"subject-{i}", (heavy, light)).name for i in range(10_000)]
    assert 0.88 < names.count("a") / len(names) < 0.92


def test_a_zero_weight_variant_gets_nobody():
    off = Variant("b", B.targets, 0)
    assert {pick("trial", f"s{i}", (A, off)).name for i in range(1000)} == {"a"}


def test_routes_assign_independently():
    same = sum(pick("one", f"s{i}", (A, B)) == pick("two", f"s{i}", (A, B)) for i in range(2000))
    assert 800 < same < 1200  # about half, not all


@pytest.mark.parametrize(
    ("header", "body", "key", "expected"),
    [
        (b"hdr", {"user": "u"}, "k", "hdr"),
        (None, {"user": "u"}, "k", "u"),
        (None, {"metadata": {"user_id": "anthropic-user"}}, "k", "anthropic-user"),
        (None, {}, "team-a", "team-a"),
        (None, {"user": ""}, None, "anonymous"),
    ],
)
def test_the_subject_is_the_header_then_the_bodys_user_then_the_key(header, body, key, expected):
    assert subject_of(header, body, key) == expected
