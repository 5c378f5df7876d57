"""Test-time fine-tuning for one prompt: the library's entry point, gathered from the files that hold each idea.

| idea                                   | file               |
|----------------------------------------|--------------------|
| settings (selection, training)         | ``sift/settings.py`` |
| selection, training outcome, result row | ``sift/records.py``  |
| bits per byte, cutting a prompt        | ``sift/bpb.py``      |
| exact reset (double-buffered weights)  | ``sift/snapshot.py`` |
| one Adam step per pick, measure        | ``sift/finetune.py`` |
| choose → plan → fine-tune → result     | ``sift/pipeline.py`` |

``from sift.ttft import run_prompt, TTFTConfig, ...`` keeps working for users and notebooks.
"""

from sift.bpb import bits_per_byte, split_prompt
from sift.finetune import finetune_and_evaluate
from sift.pipeline import (TrainingPlan, assemble_result, choose, choose_training_data, excluded_doc_ids,
                           plan_training, prompt_texts, run_prompt)
from sift.records import PromptResult, PromptSelection, TrainingOutcome
from sift.settings import SelectionSettings, TrainingSettings, TTFTConfig
from sift.snapshot import WeightSnapshot

__all__ = ["PromptResult", "PromptSelection", "SelectionSettings", "TTFTConfig", "TrainingOutcome",
           "TrainingPlan", "TrainingSettings", "WeightSnapshot", "assemble_result", "bits_per_byte", "choose",
           "choose_training_data", "excluded_doc_ids", "finetune_and_evaluate", "plan_training", "prompt_texts",
           "run_prompt", "split_prompt"]
