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


def _named_while_at_work(err: str, total: int) -> set[str]:
    """The status names a command's bar drew while a component was at work (its count below ``total``)."""
    import re

    drawn = (re.search(rf"\b(\d+)/{total} \[[^\]]*, ([\w.]+)\]", line) for line in err.replace("\r", "\n").split("\n"))
    return {m.group(2) for m in drawn if m and int(m.group(1)) < total}


def test_export_and_quantize_bars_name_the_component_at_work(tiny_model, tmp_path, capsys, bars_drawn_every):
    """An export's bar stood at "1/4" for sd15's UNet (41 s to OpenVINO, on a 2-core EPYC) without naming it, and a
    quantize drew no bar at all. A name set just after the bar drew its count waited for the next draw, which then
    showed the name beside the next count: each line named the component before the one at work."""
    from sdopt.cli import main

    bars_drawn_every(30)  # as off a terminal: a bar draws at most every 30 s
    components = {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    # (OpenVINO's export loop names them the same way; left out here for time)
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "onnx")]) == 0
    assert _named_while_at_work(capsys.readouterr().err, 4) == components
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "-o", str(tmp_path / "int8")]) == 0
    assert _named_while_at_work(capsys.readouterr().err, 2) == {"unet", "text_encoder"}


def test_init_models_bar_names_the_part_it_writes(tmp_path, capsys, bars_drawn_every):
    """Each line of init-model's bar named the part before the one at work, as the export bars did: for sd15 that
    is "4/7, vae" through its UNet, most of its 22 s."""
    from sdopt.cli import main

    bars_drawn_every(30)
    assert main(["init-model", "tiny", str(tmp_path / "tiny")]) == 0
    assert {"unet", "sdopt.json"} <= _named_while_at_work(capsys.readouterr().err, 7)
