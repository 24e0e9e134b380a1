"""Progress reporting of long commands when stderr is not a terminal."""

from l2o.cli.progress import LogProgress, progress_bar


def test_log_progress_prints_plain_lines_at_its_interval_and_at_the_end(capsys):
    with LogProgress(interval=0.0) as bar:
        job = bar.add_task("meta-train", total=10)
        bar.update(job, completed=3, description="meta-train (loss 1.0)")
        bar.advance(job)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("meta-train (loss 1.0): 3/10 (")
    assert lines[-1].startswith("meta-train (loss 1.0): 4/10 (") and len(lines) == 3
    with LogProgress(interval=3600.0) as bar:
        job = bar.add_task("evaluate", total=None)
        for _ in range(5):
            bar.advance(job)
    assert capsys.readouterr().err.splitlines() == ["evaluate: 5/? (0 s)"]


def test_a_captured_stderr_gets_log_lines_not_a_live_bar():
    assert isinstance(progress_bar(), LogProgress)


def test_train_says_compiling_until_its_first_chunk_is_done(tmp_path, monkeypatch, capsys):
    from l2o.cli import train
    from l2o.cli.main import main

    added = []

    class Recording(LogProgress):
        def add_task(self, description, **kwargs):
            added.append(description)
            return super().add_task(description, **kwargs)

    bar = Recording(interval=0.0)  # a line at every update
    monkeypatch.setattr(train, "progress_bar", lambda: bar)
    argv = ["train", "--task", "rosenbrock", "--optimizer", "adam", "--steps", "6",
            "--eval-every", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert added == ["rosenbrock / adam (compiling)"]  # shown, with the time, until step 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("rosenbrock / adam: 2/6"), lines
