"""Progress bars' status text (sdopt.bars): drawn as often as the bar, not once per call."""

import io

from tqdm import tqdm

from sdopt.bars import set_status


def test_a_status_set_many_times_is_drawn_at_the_bars_own_pace():
    """The bench names each image it measures in its bar's status: set_postfix_str redrew the bar on each call, so off
    a terminal (TQDM_MININTERVAL 30 s, sdopt.cli) a CI log got one copy of the bar per image, a few a second."""
    out = io.StringIO()
    with tqdm(total=2, desc="bench", file=out, mininterval=30) as bar:
        for i in range(50):
            set_status(bar, f"tiny: {i}/50 images measured")
        drawn = out.getvalue().count("images measured")
        bar.update()
    assert drawn <= 1, out.getvalue()
    assert "49/50 images measured" in out.getvalue()  # the last status, with the bar's next draw (here its close)
    # what the bench and the zoo's writer called before: a copy of the bar per call, whatever mininterval says
    old = io.StringIO()
    with tqdm(total=2, desc="bench", file=old, mininterval=30) as bar:
        for i in range(50):
            bar.set_postfix_str(f"tiny: {i}/50 images measured")
    assert old.getvalue().count("images measured") >= 50


def test_a_status_is_drawn_at_once_where_the_bar_is_due():
    out = io.StringIO()
    with tqdm(total=2, desc="bench", file=out, mininterval=0) as bar:
        set_status(bar, "tiny: loading")
        assert "tiny: loading" in out.getvalue()
        set_status(bar, "tiny: warming up")
        assert "tiny: warming up" in out.getvalue()
