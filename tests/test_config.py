"""Config loading: strict keys, overrides, round-trips, every shipped YAML."""

from pathlib import Path

import pytest
import yaml

from stages.config import ConfigError, PipelineConfig, build, load_config, save_config, to_dict

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_overrides_take_yaml_values():
    cfg = load_config(ROOT / "configs/tiny.yaml",
                      ["cpt.max_steps=7", "data.domain.sources=[a.txt,b.jsonl]", "cpt.learning_rate=3e-4",
                       "tracking.wandb.mode=disabled"])
    assert cfg.cpt.max_steps == 7
    assert cfg.data.domain.sources == ["a.txt", "b.jsonl"]
    assert cfg.cpt.learning_rate == pytest.approx(3e-4)
    assert cfg.tracking.wandb.mode == "disabled"


def test_misspelt_override_names_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'.*did you mean 'max_steps'"):
        load_config(ROOT / "configs/tiny.yaml", ["cpt.max_step=3"])


def test_unknown_yaml_key_names_file_key_and_closest(tmp_path):
    raw = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    raw["cpt"]["learning_rat"] = 1e-3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "cpt.learning_rat" in str(err.value) and "cpt.learning_rate" in str(err.value)


def test_bad_types_and_invariants_are_rejected():
    with pytest.raises(ConfigError, match="cpt.max_steps"):
        build(PipelineConfig, {**_minimal(), "cpt": {"max_steps": "ten"}}, origin="x.yaml")
    with pytest.raises(ConfigError, match="warmup_steps"):
        build(PipelineConfig, {**_minimal(), "cpt": {"max_steps": 5, "warmup_steps": 5}}, origin="x.yaml")
    with pytest.raises(ConfigError, match="mode"):
        build(PipelineConfig, {**_minimal(), "tracking": {"wandb": {"mode": "sometimes"}}}, origin="x.yaml")
    with pytest.raises(ConfigError, match=r"save_steps \(7\) must be a multiple of logging_steps \(5\)"):
        build(PipelineConfig, {**_minimal(), "cpt": {"save_steps": 7}}, origin="x.yaml")
    with pytest.raises(ConfigError, match="cpt.packing: padded is for IFT"):
        build(PipelineConfig, {**_minimal(), "cpt": {"packing": "padded"}}, origin="x.yaml")
    with pytest.raises(ConfigError, match="ift.packing: stream"):
        build(PipelineConfig, {**_minimal(), "ift": {"packing": "stream"}}, origin="x.yaml")
    with pytest.raises(ConfigError, match=r"data.cleaning.pii: unknown types \['phones'\]"):
        build(PipelineConfig, {**_minimal(), "data": {**_minimal()["data"], "cleaning": {"pii": ["phones"]}}},
              origin="x.yaml")


def _minimal() -> dict:
    return {"data": {"domain": {"sources": ["a.txt"]}, "instructions": {"sources": ["b.jsonl"]}}}


def test_unknown_key_fails_before_any_model_loads(tmp_path, monkeypatch):
    """`cptift run` with a typo exits 2 before resolving (building/converting) any model."""
    import stages.modeling as modeling
    import stages.pipeline as pipeline
    from stages.cli import main

    def forbidden(*a, **k):
        raise AssertionError("a model was resolved before the config was validated")

    # Patch the pipeline's own binding too: imported under a patch, it would keep the fake for later tests.
    for module in (modeling, pipeline):
        monkeypatch.setattr(module, "resolve_model", forbidden)
    monkeypatch.setattr(modeling, "load_model", forbidden)
    code = main(["run", str(ROOT / "configs/tiny.yaml"), "cpt.max_stepz=3",
                 f"run.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert not (tmp_path / "run").exists()


def test_to_dict_is_plain_yaml():
    cfg = load_config(ROOT / "configs/demo.yaml")
    text = yaml.safe_dump(to_dict(cfg))
    assert "!!python" not in text


def _leaf_keys(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_config_field_is_documented():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = []
    for key in _leaf_keys(PipelineConfig):
        section, _, rest = key.partition(".")
        # cpt and ift share one table whose rows name the field without the section.
        ok = f"`{rest}`" in doc if section in ("cpt", "ift") else f"`{key}`" in doc
        if not ok:
            missing.append(key)
    assert not missing, f"docs/config.md lacks {missing}"
