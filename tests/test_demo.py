"""The README's main job, `canary-trt demo` (what `./build.sh --demo` runs), end to end."""

from canary_trt.cli import main


def test_demo_exports_serves_and_transcribes(tmp_path, capsys):
    assert main(["demo", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "random weights. The transcripts below are meaningless text" in out
    assert out.count("transcribed: ") == 5
    assert "all (wall time, concurrent)" in out and "RTFx" in out
    assert (tmp_path / "build-cpu" / "model_repository" / "canary_qwen" / "config.pbtxt").is_file()
