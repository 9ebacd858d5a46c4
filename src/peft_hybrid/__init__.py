"""peft_hybrid: LoRA + encoder soft prompt tuning for T5-family seq2seq models.

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.testing import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(mode="hybrid"), tokenizer=tokenizer)
"""

__version__ = "0.1.0"

from .config import MODES, HybridConfig  # noqa: E402
from .model import HybridModel  # noqa: E402
from .serialization import AdapterLoadError  # noqa: E402
from .tasks import DataError, Task, get_task, list_tasks, register_task  # noqa: E402
from .trainer import HybridTrainer, HybridTrainingArguments  # noqa: E402
from .callbacks import TrainingSummary  # noqa: E402
from .checkpoints import latest_complete_checkpoint  # noqa: E402
from .ablation import AblationResult, run_ablation  # noqa: E402
from .speed import cast_frozen_base_, compile_model, merged_lora  # noqa: E402
from .inference import generate_texts, load_for_inference  # noqa: E402
from .card import CardData  # noqa: E402
from .hub import HubAccessError, HubAuthenticationError, HubError, HubUnavailableError, push_folder  # noqa: E402
from .attribution import AttributionResult, attribute  # noqa: E402  (captum/matplotlib load lazily)
from .recipe import ScriptArguments  # noqa: E402

__all__ = [
    "MODES",
    "AblationResult",
    "AdapterLoadError",
    "AttributionResult",
    "CardData",
    "DataError",
    "HybridConfig",
    "HybridModel",
    "HybridTrainer",
    "HybridTrainingArguments",
    "HubAccessError",
    "HubAuthenticationError",
    "HubError",
    "HubUnavailableError",
    "ScriptArguments",
    "Task",
    "TrainingSummary",
    "__version__",
    "attribute",
    "cast_frozen_base_",
    "compile_model",
    "generate_texts",
    "latest_complete_checkpoint",
    "load_for_inference",
    "merged_lora",
    "push_folder",
    "run_ablation",
    "get_task",
    "list_tasks",
    "register_task",
]
