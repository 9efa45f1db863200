"""``anystep.errors.one_line``: a lower-level error's text squeezed to one line, optionally cut."""

import pytest

from anystep.errors import one_line


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("a\n  b\tc  ", None, "a b c"),
        ("Error(s) in loading state_dict:\n\tsize mismatch for w", None,
         "Error(s) in loading state_dict: size mismatch for w"),
        ("a\n  b\tc", 3, "a b"),  # cut after squeezing, no ellipsis
        ("short", 200, "short"),
        ("", 10, ""),
    ],
)
def test_one_line_squeezes_whitespace_then_cuts(text, limit, expected):
    assert one_line(ValueError(text), limit) == expected
    assert one_line(ValueError(text), limit) == " ".join(str(ValueError(text)).split())[:limit]


def test_one_line_of_a_key_error_keeps_its_quotes():
    # str(KeyError('x')) is "'x'": the same text the inline idiom produced
    assert one_line(KeyError("ema.w"), 160) == "'ema.w'"


@pytest.mark.parametrize("limit", [None, 0, 3, 120])
def test_the_client_copy_agrees(limit):
    # the client (HTTP only, no torch side) keeps its own copy; both must give the same line
    from anystep.client.errors import _one_line

    for e in (ValueError("a\n  b\tc  d"), KeyError("x y"), OSError(2, "No such\nfile")):
        assert _one_line(e, limit) == one_line(e, limit)
