"""The machine fingerprint a report carries."""

import pytest


def test_the_commit_a_report_names_can_be_given(monkeypatch):
    # A lent GPU machine gets a copy of the tree whose .git is not this one's: its reports named a stale commit.
    from sdopt.machine import fingerprint, git_commit

    monkeypatch.delenv("SDOPT_GIT_COMMIT", raising=False)
    own = git_commit()
    assert own is None or len(own.removesuffix("-dirty")) == 40  # git's answer for this source tree, where it is one
    monkeypatch.setenv("SDOPT_GIT_COMMIT", "0123abcd" * 5 + "\n")
    assert git_commit() == "0123abcd" * 5
    assert fingerprint()["git_commit"] == "0123abcd" * 5


def test_an_installed_sdopt_inside_another_projects_work_tree_names_no_commit(tmp_path, monkeypatch):
    """A wheel installed into a project's .venv (site-packages inside that project's git work tree): reports named the
    project's commit as sdopt's, marked -dirty by the project's own changes."""
    import subprocess

    from sdopt import machine

    monkeypatch.delenv("SDOPT_GIT_COMMIT", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    installed = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "sdopt" / "machine.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    monkeypatch.setattr(machine, "__file__", str(installed))
    assert machine.git_commit() is None


def test_a_report_under_an_isa_cap_names_the_capped_cpu(monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512-BF16 EPYC, the report's machine line claimed avx512_bf16 and
    avx512_vnni, which the capped libraries did not use; nor did it say ATEN_CPU_CAPABILITY had moved torch's kernels."""
    import sdopt.hardware
    from sdopt.bench.report import _caps_note
    from sdopt.machine import fingerprint

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    cpu = fingerprint()["cpu"]
    assert cpu["isa"] == ["avx2", "fma"]
    assert cpu["isa_caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert _caps_note(cpu) == "; capped by ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    cpu = fingerprint()["cpu"]
    assert "avx512_bf16" in cpu["isa"] and "isa_caps" not in cpu and _caps_note(cpu) == ""
    assert _caps_note({"isa": [], "isa_caps": {"ONEDNN_MAX_CPU_ISA": "SSE41"}}) == "capped by ONEDNN_MAX_CPU_ISA=SSE41"


@pytest.mark.parametrize("cap", ["ALL", "AVX512_CORE_AMX"])
def test_a_onednn_cap_that_caps_nothing_leaves_the_run_this_cpus(monkeypatch, cap):
    """ONEDNN_MAX_CPU_ISA=ALL (oneDNN's "no cap", which sdopt.hardware reads as none) or a level above every feature the
    CPU has was recorded as a cap: the report said "capped by", and the gate took the run for another kind of CPU
    ("... under ONEDNN_MAX_CPU_ISA=ALL"), so scripts/ci_bench.sh found no baseline and compared no speed."""
    import sdopt.hardware
    from sdopt.bench.gate import cpu_kind
    from sdopt.machine import fingerprint

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    plain = fingerprint()["cpu"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN reads ONEDNN_MAX_CPU_ISA first: this one is not in effect
    cpu = fingerprint()["cpu"]
    assert "isa_caps" not in cpu and cpu_kind({"machine": {"cpu": cpu}}) == cpu_kind({"machine": {"cpu": plain}})


def test_a_onednn_cap_is_one_kind_of_cpu_however_it_is_spelled(monkeypatch):
    """oneDNN reads ONEDNN_MAX_CPU_ISA case-insensitively, but the report kept the value as typed: "avx2" and "AVX2" were
    two kinds of CPU to the gate, so scripts/ci_bench.sh looked for (and --refresh wrote) two baseline files for one cap."""
    import sdopt.hardware
    from sdopt.bench.gate import cpu_kind
    from sdopt.machine import fingerprint

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    for name in ("DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    kinds = set()
    for spelling in ("AVX2", "avx2", " Avx2 "):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", spelling)
        cpu = fingerprint()["cpu"]
        assert cpu["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
        kinds.add(cpu_kind({"machine": {"cpu": cpu}}))
    assert kinds == {"avx2 fma under ONEDNN_MAX_CPU_ISA=AVX2"}
    # a report an older sdopt wrote with the value as typed names the same kind
    old = {"isa": ["avx2", "fma"], "isa_caps": {"ONEDNN_MAX_CPU_ISA": "avx2"}}
    assert cpu_kind({"machine": {"cpu": old}}) == "avx2 fma under ONEDNN_MAX_CPU_ISA=AVX2"


def test_a_onednn_cap_is_named_in_one_spelling_in_what_sdopt_records_and_says(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=avx2 was written as typed into an int8-static artifact's overflow-fix reason and the OpenVINO
    compile error's hint, beside "ONEDNN_MAX_CPU_ISA=AVX2" in the bench report of the same cap."""
    import sdopt.hardware

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", " avx2")
    assert str(sdopt.hardware.onednn_isa_cap()) == "ONEDNN_MAX_CPU_ISA=AVX2"
    assert sdopt.hardware.int8_overflow_by_cpu() == (
        True, "auto: ONEDNN_MAX_CPU_ISA=AVX2 hides this CPU's avx512_vnni from oneDNN, so 8-bit products would saturate at 16 bits")


def test_a_cap_is_blamed_only_for_the_features_it_hides(monkeypatch):
    """hidden_by_cap said "ONEDNN_MAX_CPU_ISA=... hides this CPU's ..." whenever a cap was set and the CPU had one of the
    features, whether the cap hid it or not (its callers asked only once the features were missing); the OpenVINO crash
    guard asked the same question its own way. Both ask cap_hiding now: a cap that leaves the feature is not named."""
    import sdopt.hardware
    from sdopt.hardware import BF16_ISA, avx512_hidden_by_cap, hidden_by_cap

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert hidden_by_cap(BF16_ISA) == "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI hides this CPU's avx512_bf16 from oneDNN"
    assert avx512_hidden_by_cap() is None  # AVX-512 itself is left
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert hidden_by_cap(BF16_ISA) is None  # the cap leaves bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert str(avx512_hidden_by_cap()) == "ONEDNN_MAX_CPU_ISA=AVX2"
