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
    assert parse_overrides(["--optim.allow_tf32", "true", "--optim.learning_rate", "1e-3"]) == {
        "optim": {"allow_tf32": True, "learning_rate": 1e-3}}
    assert parse_overrides(["--a.b", "true"]) == {"a": {"b": "true"}}  # unknown: left for validation to name
    with pytest.raises(ConfigError, match=r"--eval\.seeds: '\[1,' is not a YAML list"):
        parse_overrides(["--eval.seeds", "[1,"])


def test_overrides_are_converted_by_the_type_of_their_field():
    """YAML 1.1 reads no/on/yes as booleans and 2024 as a number: text fields must keep the text."""
    cfg = load_config(None, ["--optim.mixed_precision", "no", "--log.exp_name", "on", "--log.exp_dir", "2024",
                             "--model.pretrained_view_mapper", "yes", "--eval.validation_prompts", "[on, 2024]",
                             "--optim.allow_tf32", "no", "--log.overwrite_ok", "on", "--optim.seed", "null",
                             "--optim.max_grad_norm", "1", "--data.dtu_pretrain_scans", "[2, 21]",
                             "--model.pe_sigmas", "{sigma_t: 0.25}"])
    assert cfg.optim.mixed_precision == "no"
    assert cfg.log.exp_name == "on" and str(cfg.log.exp_dir) == "2024"
    assert cfg.model.pretrained_view_mapper == "yes"
    assert cfg.eval.validation_prompts == ["on", "2024"]
    assert cfg.optim.allow_tf32 is False and cfg.log.overwrite_ok is True
    assert cfg.optim.seed is None and cfg.optim.max_grad_norm == 1.0
    assert cfg.data.dtu_pretrain_scans == [2, 21] and cfg.model.pe_sigmas.sigma_t == 0.25
    assert load_config(None, ["--log.exp_name", "2024"]).log.exp_name == "2024"
    with pytest.raises(ConfigError, match=r"optim\.mixed_precision: Input should be 'no', 'fp16' or 'bf16' "
                                          r"\(got 'false'\)"):
        load_config(None, ["--optim.mixed_precision", "false"])


def test_benchmark_overrides_use_the_benchmark_fields():
    from flows.params import load_benchmark_config

    cfg = load_benchmark_config(None, ["--n_views", "[1, 3]", "--name", "2024", "--fit.optim.mixed_precision", "no",
                                       "--data.sources", "[a.zip, b.zip]"])
    assert cfg.n_views == [1, 3] and cfg.name == "2024" and cfg.fit.optim.mixed_precision == "no"
    assert cfg.data.sources == ["a.zip", "b.zip"]


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", ".", "", "a\\b"])
def test_exp_name_must_be_a_plain_name(name):
    with pytest.raises(ConfigError, match=r"log\.exp_name: log\.exp_name must be a plain directory name"):
        load_config(None, ["--log.exp_name", name])
    assert load_config(None, ["--log.exp_name", "mode2_scan114.v2"]).log.exp_name == "mode2_scan114.v2"


@pytest.mark.parametrize(("data", "message"), [
    ({"placeholder_object_token": "<|endoftext|>"}, r"data\.placeholder_object_token: '<\|endoftext\|>' is a "
                                                    "special token of the CLIP tokenizer"),
    ({"placeholder_view_token": "<|startoftext|>"}, r"data\.placeholder_view_token: .* special token"),
    ({"placeholder_object_token": "<view>"}, "placeholder_object_token and placeholder_view_token are both '<view>'"),
    ({"placeholder_view_token": "<>"}, r"data\.placeholder_view_token: placeholder tokens look like '<name>'"),
    ({"placeholder_object_token": "object"}, r"data\.placeholder_object_token: placeholder tokens look like"),
    ({"super_category_object_token": ""}, r"data\.super_category_object_token: a super-category word is needed"),
    ({"scan_token_pattern": "<scan>"}, r"scan_token_pattern '<scan>' has no '\{scan\}' field"),
    ({"scan_token_pattern": "<{scan}_{view}>"}, r"scan_token_pattern .* may have no field but \{scan\}"),
    ({"scan_token_pattern": "<v{scan}>", "placeholder_view_token": "<v2>", "dtu_pretrain_scans": [2, 21]},
     r"scan_token_pattern '<v\{scan\}>' gives the view token '<v2>'"),
])
def test_placeholders_are_validated_with_the_config(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"data": data})


def _dtu_tree(root):
    (root / "Rectified" / "scan114").mkdir(parents=True)
    (root / "Calibration" / "cal18").mkdir(parents=True)
    return root


def test_a_scan_directory_names_the_tree_and_the_scan(tmp_path, caplog):
    """The original's commands pass `--data.train_data_dir data/dtu/Rectified/scan114`."""
    root = _dtu_tree(tmp_path / "dtu")
    scan_dir = root / "Rectified" / "scan114"
    with caplog.at_level("INFO", logger="viewneti_core.config"):
        cfg = load_config(None, ["--learnable_mode", "2", "--data.train_data_dir", str(scan_dir)])
    assert (cfg.data.train_data_dir, cfg.data.dtu_scan) == (root, 114)
    said = [r.getMessage() for r in caplog.records if "is a scan directory" in r.getMessage()]
    assert said == [f"data.train_data_dir {scan_dir} is a scan directory: using the DTU tree {root} with "
                    "data.dtu_scan 114"]
    again = load_config(None, {"learnable_mode": 2, "data": {"train_data_dir": str(scan_dir), "dtu_scan": 114}})
    assert (again.data.train_data_dir, again.data.dtu_scan) == (root, 114)  # agreeing dtu_scan: fine
    rectified = load_config(None, ["--learnable_mode", "3", "--data.train_data_dir", str(root / "Rectified")])
    assert rectified.data.train_data_dir == root
    # Unchanged: the tree root itself, and any folder in mode 0 (an image folder may be a scan's directory).
    assert load_config(None, ["--data.train_data_dir", str(root)]).data.train_data_dir == root
    mode0 = load_config(None, ["--learnable_mode", "0", "--data.train_data_dir", str(scan_dir)])
    assert mode0.data.train_data_dir == scan_dir


def test_a_scan_directory_that_disagrees_with_dtu_scan(tmp_path):
    scan_dir = _dtu_tree(tmp_path / "dtu") / "Rectified" / "scan114"
    with pytest.raises(ConfigError, match=r"is the directory of scan 114, but data\.dtu_scan is 8"):
        load_config(None, ["--data.train_data_dir", str(scan_dir), "--data.dtu_scan", "8"])
    with pytest.raises(ConfigError, match="mode 3 pretrains on data.dtu_pretrain_scans: give the DTU tree"):
        load_config(None, ["--learnable_mode", "3", "--data.train_data_dir", str(scan_dir)])


def test_shipped_demo_config_is_valid():
    cfg = load_config("configs/core_demo.yaml")
    assert cfg.eval.seeds == [0, 1]


def test_the_caption_template_is_checked_and_named():
    from viewneti_core.inference import view_prompt

    assert load_config(None, []).data.view_caption == "{view}. A photo of a {object}"  # the original's
    config = load_config(None, ["--data.view_caption", "{view}. {object}"])
    assert view_prompt(config, "<scan3>") == "<view>. <scan3>"  # inference prompts with the run's caption
    for bad in ("{view} only", "{object}, {view}, {view}", "{view} {x} {object}", "{view}. {object"):
        with pytest.raises(ConfigError, match=r"data\.view_caption"):
            load_config(None, ["--data.view_caption", bad])
