"""The sliding-window study's statistics (experiments/window.py), checked against hand-computed values."""
from math import comb

import pytest

from ocrheads_lib.experiments.window import ContextSetting, global_share, global_share_row


def test_global_share_matches_the_hypergeometric_by_hand():
    ranked = [(5, 0), (11, 1), (3, 2), (17, 0), (0, 0), (1, 1)]
    share = global_share(ranked, [5, 11, 17], n_layers=18, n_heads=4, k=4)
    assert (share.in_global, share.share, share.chance) == (3, 0.75, 12 / 72)
    # P(X >= 3) for 4 heads drawn from 72 of which 12 are global
    by_hand = sum(comb(12, x) * comb(60, 4 - x) for x in (3, 4)) / comb(72, 4)
    assert share.p_more == pytest.approx(by_hand, rel=1e-12)
    assert share.p_fewer == pytest.approx(sum(comb(12, x) * comb(60, 4 - x) for x in range(4)) / comb(72, 4))
    lo, hi = share.interval   # Clopper-Pearson for 3 of 4
    assert lo == pytest.approx(0.19412, abs=1e-4) and hi == pytest.approx(0.99369, abs=1e-4)
    assert global_share_row(share, 10, "long").verdict.startswith("more in global layers than chance")


def test_no_global_head_and_errors():
    share = global_share([(0, 0), (1, 1)], [5], n_layers=6, n_heads=2, k=2)
    assert share.in_global == 0 and share.interval[0] == 0.0 and share.p_more == 1.0
    assert "not distinguishable" in global_share_row(share, 3, "short").verdict
    with pytest.raises(ValueError, match=r"k must be in 1\.\.2"):
        global_share([(0, 0), (1, 1)], [5], n_layers=6, n_heads=2, k=3)
    with pytest.raises(ValueError, match="context_chars must be an int >= 50"):
        ContextSetting("x", 10)
    with pytest.raises(ValueError, match="plain word"):
        ContextSetting("a b", 100)
