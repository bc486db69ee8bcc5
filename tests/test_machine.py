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
