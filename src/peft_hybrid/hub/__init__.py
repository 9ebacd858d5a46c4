"""The Hugging Face Hub: downloads, uploads, the trainer's push schedule, model cards, and their errors.

``except HubError`` catches every Hub failure of every entry point (see `peft_hybrid.hub.errors`).
"""

from peft_hybrid.hub.errors import (
    HubAccessError,
    HubAuthenticationError,
    HubError,
    HubUnavailableError,
    HubUnreachableError,
)

__all__ = ["HubAccessError", "HubAuthenticationError", "HubError", "HubUnavailableError", "HubUnreachableError"]
