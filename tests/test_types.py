"""The one head type and its two formats: file keys ("l9_h0") and display labels ("L9H0")."""
from __future__ import annotations

import numpy as np
import pytest

from ocrheads_lib.types import head_key, head_label, is_head_key, parse_head


@pytest.mark.parametrize("head", [(0, 0), (9, 0), (2, 1), (27, 11), (123, 45)])
def test_head_formats_round_trip(head):
    assert parse_head(head_key(head)) == head
    assert parse_head(head_label(head)) == head
    assert head_key(head) == f"l{head[0]}_h{head[1]}" and head_label(head) == f"L{head[0]}H{head[1]}"


def test_head_formats_of_the_released_files_and_the_book():
    assert head_key((9, 0)) == "l9_h0"                 # the released score files' key
    assert head_label((9, 0)) == "L9H0"                # book, figures, widgets, prose
    assert head_label((np.int64(2), np.int64(1))) == "L2H1"     # numpy indices (argmax, divmod) print plainly
    assert head_key([3, 4]) == "l3_h4" and parse_head("L12H3") == (12, 3)
    assert isinstance(parse_head("l9_h0")[0], int)
    assert is_head_key("l9_h0") and not is_head_key("L9H0") and not is_head_key(9)   # files use the key only


@pytest.mark.parametrize("text", ["2-1", "l9h0", "L9_H0", "l9_h", "layer_9", " l9_h0", "", 9])
def test_parse_head_refuses_other_spellings(text):
    with pytest.raises(ValueError, match="is not a head; write it as 'l<layer>_h<head>'"):
        parse_head(text)
