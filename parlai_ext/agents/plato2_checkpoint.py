"""Loading and saving of the two PLATO-2 stage-2 agents (:mod:`parlai_ext.agents.plato2`,
:mod:`parlai_ext.agents.plato2_evaluator`): the same two steps around the hand-over helpers of
:mod:`parlai_ext.agents.plato2_stages`."""

from __future__ import annotations

from parlai_ext.agents.plato2_stages import (
    load_hf_with_fresh,
    load_with_fresh,
    save_model_dictionary,
)


class Plato2StageCheckpointMixin:
    """``load_state_dict`` / ``save`` of a stage-2 agent that may start from a stage-1 model.

    Loading: a checkpoint of this very model loads exactly; a stage-1 checkpoint leaves only
    the stage's new parameters (names starting with ``fresh_parameters``, or with
    ``hf_fresh_parameters`` over a pretrained backbone) at their initial values
    (:func:`load_with_fresh`, :func:`load_hf_with_fresh`). Saving writes the dictionary the
    model uses next to the model file (:func:`save_model_dictionary`), then ParlAI's save.
    The agent provides ``uses_hf``, ``model``, ``opt`` and (over a backbone) ``_hf_root``.
    Put it first: ``class A(Plato2StageCheckpointMixin, TorchGeneratorAgent)``.
    """

    fresh_parameters: tuple[str, ...] = ()
    hf_fresh_parameters: tuple[str, ...] = ()

    def load_state_dict(self, state_dict: dict) -> None:
        if self.uses_hf:
            load_hf_with_fresh(self._hf_root(), state_dict, self.hf_fresh_parameters)
        else:
            load_with_fresh(self.model, state_dict, self.fresh_parameters)

    def save(self, path: str | None = None) -> None:
        path = self.opt.get('model_file') if path is None else path
        save_model_dictionary(self, path)
        super().save(path)
