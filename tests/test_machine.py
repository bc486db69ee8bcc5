"""The machine fingerprint a report carries."""


def test_the_commit_a_report_names_can_be_given(monkeypatch):
    # A lent GPU machine gets a copy of the tree whose .git is not this one's: its reports named a stale commit.
    from sdopt.bench.machine import fingerprint, git_commit

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

    from sdopt.bench import machine

    monkeypatch.delenv("SDOPT_GIT_COMMIT", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    installed = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "sdopt" / "bench" / "machine.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    monkeypatch.setattr(machine, "__file__", str(installed))
    assert machine.git_commit() is None
