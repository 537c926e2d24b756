"""tests/helpers/demo_run.py: the demo command line the training tests share trains and saves a LoRA."""

from demo_run import demo_argv


def test_demo_argv_trains_the_tiny_model(cached_demo, tmp_path, monkeypatch, restore_logging):
    import hv_train_network

    monkeypatch.chdir(cached_demo)
    assert hv_train_network.main(demo_argv(tmp_path / "out", "--output_name", "x", steps=1)) == 0
    assert (tmp_path / "out" / "x.safetensors").is_file()
