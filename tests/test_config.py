import pytest
import yaml

from viewneti_core.config import ConfigError, ViewNetiConfig, load_config, parse_overrides


def test_defaults_follow_the_paper():
    cfg = ViewNetiConfig()
    assert cfg.learnable_mode == 5
    assert cfg.model.output_bypass_alpha_view == 5.0
    assert (cfg.model.pe_sigmas.sigma_t, cfg.model.pe_sigmas.sigma_l, cfg.model.pe_sigmas.sigma_camera) == (
        0.03,
        2.0,
        0.5,
    )
    assert (cfg.optim.train_batch_size, cfg.optim.gradient_accumulation_steps, cfg.optim.max_train_steps) == (3, 3, 3000)
    assert cfg.log.save_steps == 1500
    assert (cfg.eval.num_denoising_steps, cfg.eval.guidance_scale, cfg.eval.width, cfg.eval.height) == (30, 7.5, 768, 576)
    assert len(cfg.data.dtu_pretrain_scans) == 88


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"learnable_mode": 3, "optim": {"max_train_steps": 100}, "log": {"exp_name": "a"}}))
    cfg = load_config(
        path,
        ["--optim.max_train_steps", "3000", "--log.exp_name=b", "--eval.seeds", "[4, 5]", "--data.dtu_subset", "-2"],
    )
    assert cfg.learnable_mode == 3
    assert cfg.optim.max_train_steps == 3000
    assert cfg.log.exp_name == "b"
    assert cfg.eval.seeds == [4, 5]
    assert cfg.data.dtu_subset == -2
    assert cfg.model.pretrained_model_name_or_path == "stabilityai/stable-diffusion-2-1"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.max_train_stepz: unknown key"):
        load_config(None, ["--optim.max_train_stepz", "3"])
    with pytest.raises(ConfigError, match=r"nosection: unknown key"):
        load_config(None, ["--nosection.x", "3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"optim\.max_train_steps"):
        load_config(None, ["--optim.max_train_steps", "many"])
    with pytest.raises(ConfigError, match=r"optim\.max_train_steps"):
        load_config(None, ["--optim.max_train_steps", "-5"])
    with pytest.raises(ConfigError, match=r"data\.dtu_subset: unknown DTU subset key 2"):
        load_config(None, ["--data.dtu_subset", "2"])


@pytest.mark.parametrize("mode, message", [(1, "retired"), (7, "unknown learnable_mode 7")])
def test_bad_learnable_modes(mode, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["--learnable_mode", str(mode)])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--optim.seed"])
    with pytest.raises(ConfigError, match="expected a '--dotted.key value'"):
        parse_overrides(["optim.seed", "3"])
    assert parse_overrides(["--a.b", "true", "--a.c", "1e-3"]) == {"a": {"b": True, "c": 1e-3}}


def test_shipped_demo_config_is_valid():
    cfg = load_config("configs/core_demo.yaml")
    assert cfg.eval.seeds == [0, 1]
