"""The command line: every subcommand documents itself; user errors exit 2 with one line."""

import json

import pytest

from stages.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: cptift " + command in capsys.readouterr().out


def test_too_much_bad_data_exits_2_naming_file_line_and_field(tmp_path, capsys):
    """One bad row of two is above data.max_bad_fraction (1%): preparation stops and says where and what to do."""
    domain = tmp_path / "docs.jsonl"
    domain.write_text(json.dumps({"text": "x" * 300}) + "\n" + json.dumps({"body": "y" * 300}) + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "q", "response": "a"}) + "\n")
    code = main(["prepare", "configs/tiny.yaml", f"run.output_dir={tmp_path / 'run'}",
                 f"data.domain.sources=[{domain}]", f"data.instructions.sources=[{sft}]",
                 "tracking.wandb.mode=disabled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: 1 of 2 inputs are unreadable")  # one closing line
    assert f"first: {domain}:2: field 'text' missing" in err[-1] and "raise data.max_bad_fraction" in err[-1]
    assert not (tmp_path / "run" / "data").exists()  # nothing half-prepared left behind


def test_compare_requires_finished_runs(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "forgetting.json not found" in capsys.readouterr().err
