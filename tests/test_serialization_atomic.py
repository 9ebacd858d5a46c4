"""A writer killed in the middle of a save never leaves a folder that loads as if it were whole."""

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from peft_hybrid import AdapterLoadError, HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset

CONFIG = dict(mode="hybrid", lora_dropout=0.0)

# Saves model 1, then model 2 into the same folder. Before each rename (os.replace, the step that
# makes a written temp file visible) of the second save it names the file on stdout and waits, so
# the test's SIGKILL lands at a known point in the middle of that save.
WRITER = textwrap.dedent(
    f"""
    import os, sys, torch
    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.offline import t5_from_preset
    target = sys.argv[1]
    models = []
    for seed in (1, 2):
        base, _ = t5_from_preset("tiny")
        model = HybridModel(base, HybridConfig(**{CONFIG!r}))
        with torch.no_grad():
            for p in model.adapter_tensors().values():
                p.fill_(float(seed))
        models.append(model)
    models[0].save_pretrained(target)
    real_replace = os.replace
    def announced_replace(src, dst):
        print("replacing", os.path.basename(dst), flush=True)
        sys.stdin.readline()
        real_replace(src, dst)
    os.replace = announced_replace
    models[1].save_pretrained(target)
    """
)


def _load(folder):
    base, _ = t5_from_preset("tiny")
    return HybridModel.from_pretrained(folder, base_model=base)


def _kill_second_save_before_renaming(target, file_name):
    """Run WRITER and SIGKILL it while the second save is about to rename ``file_name`` into place.

    Only the writer's ``replacing`` lines are answered (anything else a library prints on stdout
    must not let a rename through), and nothing is timed: the writer waits on its stdin.
    """
    stderr = target.parent / "writer.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        for line in proc.stdout:
            if not line.startswith("replacing "):
                continue
            if line.strip() == f"replacing {file_name}":
                break
            proc.stdin.write("\n")  # let earlier renames of this save go through
            proc.stdin.flush()
        else:
            raise AssertionError(f"the writer never reached the rename of {file_name}:\n{stderr.read_text()[-3000:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # a no-op after the SIGKILL; ends a writer left waiting when the test failed
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_kill_while_the_new_weights_are_written_keeps_the_old_adapter_whole(tmp_path):
    target = tmp_path / "adapter"
    _kill_second_save_before_renaming(target, "adapter_model.safetensors")
    # The kill landed mid-save: the new weights were fully written to a temp file, not yet renamed.
    [temp] = _temp_files(target)
    assert temp.startswith(".adapter_model.safetensors.")
    assert {float(t.flatten()[0]) for t in load_file(target / temp).values()} == {2.0}
    # What the folder shows is the first save, whole.
    values = {float(t.detach().flatten()[0]) for t in _load(target).adapter_tensors().values()}
    assert values == {1.0}


@pytest.mark.slow
def test_kill_after_the_weights_before_the_config_is_refused_as_interrupted(tmp_path):
    target = tmp_path / "adapter"
    _kill_second_save_before_renaming(target, "hybrid_config.json")
    # The kill landed between the two renames: new weights in place, the config still the old one.
    [temp] = _temp_files(target)
    assert temp.startswith(".hybrid_config.json.")
    assert {float(t.flatten()[0]) for t in load_file(target / "adapter_model.safetensors").values()} == {2.0}
    # The old config's hash does not match the new weights, and the load says so.
    with pytest.raises(AdapterLoadError, match="interrupted") as err:
        _load(target)
    assert "save" in str(err.value)  # says to save again


def _crash_before_config(monkeypatch):
    """Make saves die (like a killed process) after the weights and before the config."""
    import peft_hybrid.serialization as serialization

    real_write = serialization.atomic_write_bytes

    def crash_on_config(path, data):
        if path.name == "hybrid_config.json":
            raise KeyboardInterrupt("simulated crash")
        real_write(path, data)

    monkeypatch.setattr(serialization, "atomic_write_bytes", crash_on_config)


def test_config_written_last_so_a_half_first_save_is_refused(tmp_path, monkeypatch):
    base, _ = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="hybrid"))
    _crash_before_config(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "a")
    monkeypatch.undo()
    with pytest.raises(AdapterLoadError, match="hybrid_config.json not found"):
        _load(tmp_path / "a")
    # No temporary files are left behind either.
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_model.safetensors"]


def test_interrupted_overwrite_is_detected_by_the_hash(tmp_path, monkeypatch):
    first, _ = t5_from_preset("tiny")
    old = HybridModel(first, HybridConfig(mode="hybrid"))
    old.save_pretrained(tmp_path)
    second, _ = t5_from_preset("tiny")
    new = HybridModel(second, HybridConfig(mode="hybrid", seed=7))
    _crash_before_config(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()
    with pytest.raises(AdapterLoadError, match="interrupted"):
        _load(tmp_path)
    assert not torch.equal(old.prompt.weight, new.prompt.weight)
