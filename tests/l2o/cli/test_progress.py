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
