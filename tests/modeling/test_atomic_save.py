"""A writer killed in the middle of a save never leaves a folder that loads as if it were whole."""

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from peft_hybrid import AdapterLoadError, HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset

# Big LoRA (r=512 on every projection) so that a save takes long enough to be interrupted.
CONFIG = dict(mode="hybrid", r=512, target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"], lora_dropout=0.0)

WRITER = textwrap.dedent(
    f"""
    import sys, torch
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
    print("ready", flush=True)
    i = 0
    while True:
        models[i % 2].save_pretrained(target)
        i += 1
    """
)


def _load(folder):
    base, _ = t5_from_preset("tiny")
    return HybridModel.from_pretrained(folder, base_model=base)


@pytest.mark.slow
def test_killed_writer_leaves_old_or_new_adapter_or_a_clear_error(tmp_path):
    rng = random.Random(0)
    outcomes = {"whole": 0, "refused": 0}
    for attempt in range(3):
        target = tmp_path / f"adapter-{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            model = _load(target)
        except AdapterLoadError as err:
            assert "save" in str(err)  # says to save again
            outcomes["refused"] += 1
            continue
        values = {float(t.detach().flatten()[0]) for t in model.adapter_tensors().values()}
        # Whole means every tensor comes from the same save.
        assert values in ({1.0}, {2.0}), values
        outcomes["whole"] += 1
    assert outcomes["whole"] + outcomes["refused"] == 3


def _crash_before_config(monkeypatch):
    """Make saves die (like a killed process) after the weights and before the config."""
    import peft_hybrid.modeling.serialization as serialization

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
